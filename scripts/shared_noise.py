"""How independent are the S copies of `noise="shared"`? Effective sample sizes against exact draws.

For each benchmark model (`tfp_bnn.benchmark.MODELS`, Flipout-converted, untrained posteriors)
and a fixed batch of inputs, R passes of S Monte Carlo copies are drawn with exact independent
weights and with the shared-noise mode (one perturbation per pass, Flipout signs per row). Per
output element, with m and v the mean and the unbiased variance over the S copies of one pass:

    ESS(mean)     = S * Var_R(m_exact) / Var_R(m_shared)
    ESS(variance) = S * Var_R(v_exact) / Var_R(v_shared)
    bias          = E_R[v_shared] / E_R[v_exact]          (1: the copies' spread is right)

(S i.i.d. copies give ESS = S by definition). Medians and quartiles over the output elements
are printed as a markdown table.

Usage:
    python scripts/shared_noise.py [--passes 300] [--samples 10] [--models mlp,cnn_skip,...]
"""
import argparse

import numpy as np

import tfp_bnn
from tfp_bnn import benchmark, sampling
from tfp_bnn._keras import tf, tf_keras


def measure(name, passes, num_samples, batch=16):
    tf_keras.utils.set_random_seed(0)
    bnn = tfp_bnn.bayesify(benchmark.MODELS[name](), estimator="flipout",
                           num_train_examples=1000)
    x = tf.constant(np.random.default_rng(0).random((batch, *bnn.inputs[0].shape[1:]),
                                                    dtype=np.float32))
    stats = {}
    for noise in ("exact", "shared"):
        run = tf.function(lambda seed, noise=noise: sampling.sample_outputs(
            bnn, x, num_samples, seed=seed, noise=noise))
        draws = np.stack([run(tf.constant([i, 11], tf.int64)).numpy() for i in range(passes)])
        stats[noise] = (draws.mean(1), draws.var(1, ddof=1))  # [R, B, C] each
    (m_e, v_e), (m_s, v_s) = stats["exact"], stats["shared"]
    ess_mean = num_samples * m_e.var(0) / m_s.var(0)
    ess_var = num_samples * v_e.var(0) / v_s.var(0)
    bias = v_s.mean(0) / v_e.mean(0)
    return {k: np.percentile(v, [25, 50, 75]) for k, v in
            (("ess_mean", ess_mean), ("ess_var", ess_var), ("bias", bias))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=300)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--models", default="mlp,cnn,cnn_skip,mobilenet,transformer")
    args = parser.parse_args(argv)
    print(f"| model | ESS of the mean (of S={args.samples}) | ESS of the variance | "
          "E[variance] shared / exact |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        r = measure(name, args.passes, args.samples)
        cells = [f"{q[1]:.1f} ({q[0]:.1f}-{q[2]:.1f})" if k != "bias" else
                 f"{q[1]:.2f} ({q[0]:.2f}-{q[2]:.2f})" for k, q in r.items()]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
