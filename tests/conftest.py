"""Shared fixtures: every test starts from the same Python/NumPy/TF random state."""
import pytest

from tfp_bnn._keras import tf_keras


@pytest.fixture(autouse=True)
def _seed():
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(0)
    yield
