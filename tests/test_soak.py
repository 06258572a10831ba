"""Soak: 8 threads x 2,000 calls of an exported signature through TF Serving's Session path, no
error and resident memory flat (marked slow: ``pytest -m slow tests/test_soak.py``)."""
import os
import threading

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn._keras import tf_keras
from tfp_bnn.serving import load_session

THREADS, CALLS = 8, 2000


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_eight_threads_2000_calls_each_with_flat_memory(tmp_path):
    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                  tf_keras.layers.Dense(16, activation="relu"),
                                  tf_keras.layers.Dense(3)])
    path = tfp_bnn.export_savedmodel(tfp_bnn.bayesify(source, num_train_examples=100),
                                     tmp_path / "m", num_samples=10)
    session = load_session(path)
    x = np.random.default_rng(0).uniform(size=(4, 4)).astype(np.float32)
    counts, errors, rss = [0] * THREADS, [], {}

    def work(i):
        try:
            for k in range(CALLS):
                out = session.run("serving_default", {"features": x})
                if not (np.isfinite(out["probabilities"]).all()
                        and (out["mutual_information"] >= 0).all()):
                    raise AssertionError(f"thread {i} call {k}: {out}")
                counts[i] += 1
                if i == 0 and k == CALLS // 4:
                    rss["warm"] = _rss_bytes()  # after allocator and graph warm-up
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss["end"] = _rss_bytes()
    session.close()
    assert not errors, errors[:3]
    assert counts == [CALLS] * THREADS
    # Flat: the last three quarters of the 16,000 calls (12,000 calls) add under 32 MiB; a leak
    # of ~3 KiB per call (one request's tensors and their Python objects) would exceed it.
    assert rss["end"] - rss["warm"] < 32 * 2 ** 20, rss
