"""Resumable training: a run killed mid-epoch and restarted with BackupAndRestore ends at the
posterior of an uninterrupted run, having trained every step with the same KL weight.

The backup is taken every epoch: tf_keras's BackupAndRestore(save_freq=<int>) restores the
step count mid-epoch but restarts the epoch's data at its first batch, so a mid-epoch backup
cannot reproduce the uninterrupted trajectory. Killed mid-epoch, the run redoes that epoch.

The KL weight is a variable of each layer (checkpointed with the model) and KLAnnealing derives
its multiplier from the optimizer's step count (checkpointed too), so the warm-up continues
where it stopped. Every run is a subprocess (tests/resume_worker.py) bounded by a timeout.
"""
import json
import os
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
TIMEOUT = 120
KILL_AFTER = 10  # mid-epoch 2 (6 steps per epoch); the last backup was after epoch 1


def _start(tmp, name, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    log = open(tmp / f"{name}.log", "a")
    proc = subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, log


def _wait(tmp, name, proc, log):
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return "timeout"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _steps(path):
    return [json.loads(line) for line in open(path)]


def test_killed_run_resumes_to_the_uninterrupted_posterior(tmp_path):
    reference = _start(tmp_path, "reference", tmp_path / "ref_backup", tmp_path / "ref")
    try:
        killed = _start(tmp_path, "resumed", tmp_path / "backup", tmp_path / "run", KILL_AFTER)
        assert _wait(tmp_path, "resumed", *killed) == 3, (tmp_path / "resumed.log").read_text()
        assert not (tmp_path / "run.npz").exists()
        assert os.listdir(tmp_path / "backup")  # the mid-epoch backup it resumes from
        resumed = _start(tmp_path, "resumed", tmp_path / "backup", tmp_path / "run")
        assert _wait(tmp_path, "resumed", *resumed) == 0, (tmp_path / "resumed.log").read_text()
    finally:
        rc = _wait(tmp_path, "reference", *reference)
    assert rc == 0, (tmp_path / "reference.log").read_text()

    # every optimizer step ran with the uninterrupted run's KL weight (mid warm-up at the kill)
    ref_steps, run_steps = _steps(tmp_path / "ref.steps"), _steps(tmp_path / "run.steps")
    assert [s for s, _ in ref_steps] == list(range(18))
    assert [s for s, _ in run_steps] == list(range(KILL_AFTER)) + list(range(6, 18))
    ref_weight = dict(ref_steps)
    for step, weight in run_steps:
        np.testing.assert_allclose(weight, ref_weight[step], rtol=1e-7, err_msg=f"step {step}")
    assert ref_weight[6] < ref_weight[11] < ref_weight[12]  # resumed inside the warm-up

    ref, run = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "run.npz")
    assert len(ref.files) == len(run.files) > 0
    initial_rho = np.log(np.expm1(1e-20))  # -46.05
    for key in ref.files:
        np.testing.assert_allclose(run[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert not np.allclose(ref["arr_1"], initial_rho)  # rho trained: the KL gradient counted
    history = json.loads((tmp_path / "run.json").read_text())
    ref_history = json.loads((tmp_path / "ref.json").read_text())
    # the resumed fit runs only the epochs left (epoch 2 again, then epoch 3)
    np.testing.assert_allclose(history["kl"], ref_history["kl"][-len(history["kl"]):], rtol=1e-5)
