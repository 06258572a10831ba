"""Importing tfp_bnn works in any order with TensorFlow / tf_keras / Keras 3, and leaves the
user's own `tf.keras` alone (it stays Keras 3 unless the user set TF_USE_LEGACY_KERAS)."""
import os
import subprocess
import sys

import pytest

PROBE = ("import tensorflow as tf, tfp_bnn; "
         "v = tf.keras.version() if hasattr(tf.keras, 'version') else '2'; "
         "m = tfp_bnn.bayesify(tfp_bnn._keras.tf_keras.Sequential(["
         "tfp_bnn._keras.tf_keras.Input((2,)), tfp_bnn._keras.tf_keras.layers.Dense(1)]), "
         "kl_weight=1.0); print('KERAS', v, type(m.layers[-1]).__name__)")


def _run(first, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(env_extra or {})
    code = (f"import {first}; " if first else "") + PROBE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if line.startswith("KERAS")][0].split()


@pytest.mark.parametrize("first", [None, "tf_keras", "tensorflow", "keras"])
def test_any_import_order_keeps_tf_keras_as_keras_3(first):
    _, version, layer = _run(first)
    assert version.startswith("3."), version
    assert layer == "DenseFlipout"


def test_legacy_keras_environment_is_respected():
    _, version, layer = _run("tf_keras", {"TF_USE_LEGACY_KERAS": "1"})
    assert version == "2", version
    assert layer == "DenseFlipout"
