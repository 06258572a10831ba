"""bayesian-torch's side of `compare_bayesian_torch.py`, run by that script in the peer's venv.

Imports only torch, bayesian_torch and numpy: the split comes as .npy files. The network is
bayesian-torch's README recipe: a deterministic ``nn.Sequential`` 64-128-128-10 MLP converted by
``dnn_to_bnn`` to ``LinearFlipout`` layers (prior N(0, 1), posterior mu ~ N(0, 0.1), rho ~
N(-3, 0.1), Bayesian biases), trained by its documented loop

    loss = cross_entropy(model(x), y) + kl / N

and predicted by S forward passes under ``torch.no_grad()``, averaging the softmax.

The KL: in bayesian-torch 0.5 ``get_kl_loss`` sums each layer's *mean* per-weight KL
(``BaseVariationalLayer_.kl_div`` returns ``kl.mean()``), which is not the ELBO's KL. With
``--kl sum`` (the default) each tensor's mean from that same ``kl_div`` is multiplied by the
tensor's size, which is the summed KL that tfp_bnn's ELBO uses; ``--kl library`` uses
``get_kl_loss`` as it is. Both cost the same ops.

    python _bayesian_torch_side.py DATA_DIR OUT_DIR --epochs 30 --batch-size 64 --lr 1e-3 \
        --num-samples 30 --seed 0 --threads 2

Writes ``OUT_DIR/torch.json`` (timings, versions) and ``OUT_DIR/torch_probs.npy`` (the
predictive probabilities of the first timed prediction).
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn, get_kl_loss

# bayesian-torch's README template; "prior_sigma" is the prior's standard deviation (it fills
# prior_weight_sigma, despite being passed as prior_variance).
PRIOR = {"prior_mu": 0.0, "prior_sigma": 1.0, "posterior_mu_init": 0.0,
         "posterior_rho_init": -3.0, "type": "Flipout", "moped_enable": False,
         "moped_delta": 0.5}


def summed_kl(model):
    """The ELBO's KL: every tensor's mean per-weight KL (bayesian-torch's kl_div) x its size."""
    total = 0.0
    for layer in model.modules():
        if not hasattr(layer, "mu_weight"):
            continue
        sigma = torch.log1p(torch.exp(layer.rho_weight))
        total = total + layer.kl_div(layer.mu_weight, sigma, layer.prior_weight_mu,
                                     layer.prior_weight_sigma) * layer.mu_weight.numel()
        if layer.mu_bias is not None:
            sigma = torch.log1p(torch.exp(layer.rho_bias))
            total = total + layer.kl_div(layer.mu_bias, sigma, layer.prior_bias_mu,
                                         layer.prior_bias_sigma) * layer.mu_bias.numel()
    return total


def build(num_features, num_classes, hidden=(128, 128)):
    sizes = (num_features,) + tuple(hidden)
    modules = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        modules += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*modules, torch.nn.Linear(sizes[-1], num_classes))
    dnn_to_bnn(model, PRIOR)
    return model


def train_step(model, optimizer, xb, yb, kl_fn, n):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(xb), yb) + kl_fn(model) / n
    loss.backward()
    optimizer.step()
    return loss


def fit(model, x, y, epochs, batch_size, lr, kl_fn):
    """The timed loop: per epoch a fresh permutation, then batches of ``batch_size``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(x)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            loss = train_step(model, optimizer, x[idx], y[idx], kl_fn, n)
    seconds = time.perf_counter() - start
    steps = int(next(iter(optimizer.state.values()))["step"])
    return seconds, float(loss.detach()), steps


def predict(model, x, num_samples):
    model.eval()
    with torch.no_grad():
        probs = torch.stack([F.softmax(model(x), dim=-1) for _ in range(num_samples)])
        return probs.mean(dim=0)


def run(data_dir, out_dir, epochs, batch_size, lr, num_samples, seed, threads, predict_calls,
        kl):
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(seed)
    load = lambda name: np.load(os.path.join(data_dir, name + ".npy"))  # noqa: E731
    x_train = torch.from_numpy(load("x_train"))
    y_train = torch.from_numpy(load("y_train").astype(np.int64))
    x_test = torch.from_numpy(load("x_test"))
    num_classes = int(load("y_train").max()) + 1
    kl_fn = summed_kl if kl == "sum" else get_kl_loss

    model = build(x_train.shape[1], num_classes)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    # Warm-up (untimed), mirroring the tfp_bnn side's trace: one full and one partial batch,
    # then back to the initial weights with a fresh optimiser.
    rest = len(x_train) % batch_size or batch_size
    warm = torch.optim.Adam(model.parameters(), lr=lr)
    for xb, yb in ((x_train[:batch_size], y_train[:batch_size]),
                   (x_train[:rest], y_train[:rest])):
        train_step(model, warm, xb, yb, kl_fn, len(x_train))
    model.load_state_dict(initial)

    train_seconds, last_loss, steps = fit(model, x_train, y_train, epochs, batch_size, lr, kl_fn)
    predict(model, x_test, num_samples)  # warm-up
    times, probs = [], None
    for _ in range(predict_calls):
        start = time.perf_counter()
        p = predict(model, x_test, num_samples)
        times.append(time.perf_counter() - start)
        probs = p if probs is None else probs
    np.save(os.path.join(out_dir, "torch_probs.npy"), probs.numpy())
    from importlib.metadata import version
    result = {"train_seconds": train_seconds, "predict_seconds": times,
              "final_batch_loss": last_loss, "optimizer_steps": steps, "kl": kl, "threads": threads,
              "torch": torch.__version__, "bayesian_torch": version("bayesian-torch"),
              "numpy": np.__version__}
    with open(os.path.join(out_dir, "torch.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-samples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--predict-calls", type=int, default=5)
    parser.add_argument("--kl", choices=("sum", "library"), default="sum")
    args = parser.parse_args(argv)
    run(args.data_dir, args.out_dir, args.epochs, args.batch_size, args.lr, args.num_samples,
        args.seed, args.threads, args.predict_calls, args.kl)


if __name__ == "__main__":
    main()
