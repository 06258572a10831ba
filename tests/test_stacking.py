"""The S kernel draws folded into the channels of one op equal S separate ops, exactly."""
import numpy as np
import pytest

from tfp_bnn import stacking
from tfp_bnn._keras import tf

S, B = 3, 2
RNG = np.random.default_rng(0)


def _conv(strides=1, dilations=1, padding="SAME"):
    return lambda x, k: tf.nn.convolution(x, k, strides=strides, padding=padding,
                                          dilations=dilations)


def _depthwise(x, k):
    return tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME")


def _draws(*shape):
    return tf.constant(RNG.normal(size=(S,) + shape), tf.float32)


def _finish(out, bias):
    return tf.nn.relu(out if bias is None else tf.nn.bias_add(out, bias))


# (input shape per copy, stages, kernel shapes, fold axes, output channels)
CASES = {
    "conv2d": ((6, 6, 4), [("kernel", _conv())], {"kernel": (3, 3, 4, 5)}, {"kernel": -1}, 5),
    "strided_dilated": ((9, 9, 2), [("kernel", _conv(2, 1, "VALID"))],
                        {"kernel": (3, 3, 2, 4)}, {"kernel": -1}, 4),
    "dilated": ((9, 9, 2), [("kernel", _conv(1, 2))], {"kernel": (3, 3, 2, 4)},
                {"kernel": -1}, 4),
    "grouped": ((6, 6, 4), [("kernel", _conv())], {"kernel": (3, 3, 2, 6)}, {"kernel": -1}, 6),
    "conv1d": ((7, 3), [("kernel", _conv())], {"kernel": (3, 3, 5)}, {"kernel": -1}, 5),
    "depthwise": ((6, 6, 3), [("dw", _depthwise)], {"dw": (3, 3, 3, 2)}, {"dw": -2}, 6),
    "separable": ((6, 6, 3), [("dw", _depthwise), ("pw", _conv(padding="VALID"))],
                  {"dw": (3, 3, 3, 2), "pw": (1, 1, 6, 4)}, {"dw": -2, "pw": -1}, 4),
}


def _reference(xs, stages, kernels, bias):
    outs = []
    for s in range(S):
        x = xs[s]
        for name, f in stages:
            x = f(x, kernels[name][s])
        b = None if bias is None else (bias[s] if bias.shape.rank == 2 else bias)
        outs.append(_finish(x, b))
    return tf.stack(outs)


@pytest.mark.parametrize("bias_kind", ["none", "deterministic", "per_sample"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_folded_equals_one_op_per_draw(case, bias_kind):
    shape, stages, kernel_shapes, axes, channels = CASES[case]
    xs = tf.constant(RNG.normal(size=(S, B) + shape), tf.float32)
    kernels = {name: _draws(*k) for name, k in kernel_shapes.items()}
    bias = {"none": None, "deterministic": tf.constant(RNG.normal(size=channels), tf.float32),
            "per_sample": _draws(channels)}[bias_kind]
    expected = _reference(xs, stages, kernels, bias)
    folded = stacking.sample_stages(xs, stages, kernels, bias, _finish, axes)
    looped = stacking.sample_stages(xs, stages, kernels, bias, _finish, None)
    assert folded.shape == expected.shape
    np.testing.assert_allclose(folded, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(looped, expected, rtol=1e-4, atol=1e-4)
    assert float(tf.reduce_max(tf.abs(expected[0] - expected[1]))) > 1e-2  # draws differ


def _op_types(fn, *args):
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def test_the_folded_op_is_one_grouped_convolution_and_large_inputs_loop(monkeypatch):
    shape, stages, kernel_shapes, axes, _ = CASES["conv2d"]
    xs = tf.zeros((S, B) + shape)
    kernels = {"kernel": _draws(*kernel_shapes["kernel"])}
    run = lambda x: stacking.sample_stages(x, stages, kernels, None, _finish, axes)  # noqa: E731
    ops = _op_types(run, xs)
    assert "Conv2D" in ops and "While" not in ops and "StatelessWhile" not in ops
    # 6*6 positions x 180 multiply-adds per position: above the bound the draws loop.
    monkeypatch.setattr(stacking, "FOLD_MAX_MACS", 6 * 6 * 180 - 1)
    assert {"While", "StatelessWhile"} & _op_types(run, xs)
    # Unknown spatial sizes, or channels first: the loop.
    spec = tf.TensorSpec([S, B, None, None, 4])
    monkeypatch.setattr(stacking, "FOLD_MAX_MACS", 10 ** 9)
    assert {"While", "StatelessWhile"} & {
        op.type for op in tf.function(run).get_concrete_function(spec).graph.get_operations()}
