"""Write the tutorial notebooks from the cell sources in this file, with outputs stripped.

    python tutorials/_build.py           # (re)write tutorials/*.ipynb
    python tutorials/_build.py --check   # exit 1 when a committed notebook differs from this file

Each notebook is a list of cells: ``md(text)`` or ``code(text)``. Every notebook starts with
the same three cells (title with the Colab badge, the install cell, the setup cell that reads
``TFP_BNN_TUTORIAL_FAST``) and ends with a "What you learned" markdown cell;
``tests/test_tutorials.py`` checks that and executes every notebook in fast mode.
"""
import os
import sys
import textwrap

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))
COLAB = "https://colab.research.google.com/github/tfp-bnn/tfp_bnn/blob/main/tutorials/{name}"
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"
PIP_TARGET = "tfp_bnn @ git+https://github.com/tfp-bnn/tfp_bnn.git"
FAST_VAR = "TFP_BNN_TUTORIAL_FAST"
CLOSING = "## What you learned"


def md(text):
    return v4.new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text):
    return v4.new_code_cell(textwrap.dedent(text).strip("\n"))


def header(name, title, intro):
    return md(f"# {title}\n\n{BADGE.format(url=COLAB.format(name=name))}\n\n"
              + textwrap.dedent(intro).strip("\n"))


INSTALL = code(f"""
    # Install tfp_bnn when it is missing (on Colab); where it is installed this does nothing.
    try:
        import tfp_bnn
    except ImportError:
        %pip install -q "{PIP_TARGET}"
        import tfp_bnn
""")


def setup(stdlib=(), settings="", workdir=False):
    """The setup cell: imports, the fast switch, the seed (and a temporary work folder)."""
    imports = "\n".join(f"import {m}" for m in sorted({"os", *stdlib}
                                                      | ({"tempfile"} if workdir else set())))
    settings = textwrap.dedent(settings).strip("\n")
    return code(imports + """

import tfp_bnn  # before tensorflow and tf_keras: it sets TensorFlow Probability up for tf_keras

import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
import tf_keras

%matplotlib inline
tf.get_logger().setLevel("ERROR")  # keep TensorFlow's INFO and deprecation lines out of the way

# CI runs every tutorial with TFP_BNN_TUTORIAL_FAST=1: a few epochs and samples, so the
# numbers and plots are rough. Leave it unset for the real run (a few minutes on a CPU).
FAST = os.environ.get("TFP_BNN_TUTORIAL_FAST", "") not in ("", "0")
""" + settings + """
tf_keras.utils.set_random_seed(0)
""" + ("""WORKDIR = tempfile.mkdtemp(prefix="tfp_bnn_tutorial_")  # exports go here, not the repo
print("fast mode" if FAST else "full run", "| work folder:", WORKDIR)
""" if workdir else """print("fast mode" if FAST else "full run")
"""))


CLEANUP = code("""
    import shutil

    shutil.rmtree(WORKDIR, ignore_errors=True)  # the exports were only for this tutorial
""")


# ---------------------------------------------------------------------------------------------
# 01 Quickstart on Iris
# ---------------------------------------------------------------------------------------------
QUICKSTART = [
    header("01_quickstart_iris.ipynb", "Quickstart: a Bayesian neural network on Iris", """
        From an ordinary Keras classifier to a Bayesian one that says how sure it is, and on to a
        TensorFlow Serving export, in seven steps:

        1. load the Iris table shipped with `tfp_bnn`;
        2. build a Keras MLP and make it Bayesian with `tfp_bnn.bayesify`;
        3. train it with plain `compile`/`fit` on the ELBO and plot the NLL and KL curves;
        4. predict with Monte Carlo samples and split the uncertainty into aleatoric and epistemic;
        5. check calibration with a reliability diagram;
        6. export a SavedModel whose serving signature samples inside the graph;
        7. send it a TF Serving REST request, without a server.
    """),
    INSTALL,
    setup(["json"], """
        EPOCHS = 60 if FAST else 300
        NUM_SAMPLES = 20 if FAST else 100
    """, workdir=True),
    md("""
        ## 1. Data

        150 flowers, 4 measurements, 3 species. The CSV ships with the package, so nothing is
        downloaded. The split is stratified by class; the min-max scaler sees the training
        split only.
    """),
    code("""
        from tfp_bnn import data

        table = data.load_iris()
        split = data.train_val_test_split(table.features, table.labels, test_fraction=0.2,
                                          val_fraction=0.2, seed=0)
        scaler = data.MinMaxScaler().fit(split.x_train)
        x_train, x_val, x_test = (scaler.transform(x).astype("float32")
                                  for x in (split.x_train, split.x_val, split.x_test))
        y_train, y_val, y_test = split.y_train, split.y_val, split.y_test
        print("features:", table.feature_names)
        print("classes: ", table.class_names)
        print("train / val / test:", len(x_train), len(x_val), len(x_test))
    """),
    md("""
        ## 2. A Keras model, made Bayesian

        `bayesify` rebuilds the model with every `Dense` layer replaced by a TFP Flipout layer:
        each weight gets a Normal posterior `q(w) = N(mu, sigma^2)` and a `N(0, 1)` prior. The
        source model is not modified. `num_train_examples` sets the KL weight to `1/N`, so the
        training loss is the negative ELBO per example:

            loss = NLL + KL(q || p) / N
    """),
    code("""
        model = tf_keras.Sequential([
            tf_keras.Input((4,), name="features"),
            tf_keras.layers.Dense(32, activation="relu"),
            tf_keras.layers.Dense(32, activation="relu"),
            tf_keras.layers.Dense(3, name="logits"),
        ])
        bnn = tfp_bnn.bayesify(model, estimator="flipout", prior="normal",
                               num_train_examples=len(x_train))
        print([type(layer).__name__ for layer in bnn.layers])
        bnn.summary()
    """),
    md("""
        ## 3. Train with `fit`

        The model logs the two parts of the loss, `nll` and `kl`, next to `loss`, for the training
        data and for the validation data.
    """),
    code("""
        bnn.compile(tf_keras.optimizers.Adam(0.01),
                    tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = bnn.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=EPOCHS,
                          batch_size=16, verbose=0)

        fig, (ax_nll, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.5))
        ax_nll.plot(history.history["nll"], label="train")
        ax_nll.plot(history.history["val_nll"], label="validation")
        ax_nll.set(title="NLL (one weight sample per step)", xlabel="epoch")
        ax_nll.legend()
        ax_kl.plot(history.history["kl"], color="tab:red")
        ax_kl.set(title="KL(q || p) / N", xlabel="epoch")
        plt.show()
    """),
    md("""
        The NLL falls as the network fits. The KL term starts high, because the posterior starts
        narrow (sigma = 0.05) next to the `N(0, 1)` prior, and falls as training widens it
        wherever the data allow: that width is the weight uncertainty the predictions sample.

        ## 4. Predict with uncertainty

        `tfp_bnn.predict` draws S weight samples inside one compiled graph and returns a fixed
        `Prediction`:

        * `probabilities`: the mean of the S softmax outputs;
        * `predictive_entropy`, the **total** uncertainty, `H[mean_s p_s]`;
        * `expected_entropy`, the **aleatoric** part, `mean_s H[p_s]` (noise in the data: classes
          that overlap);
        * `mutual_information`, the **epistemic** part, total - aleatoric (disagreement between
          weight samples: lack of data).
    """),
    code("""
        from tfp_bnn import metrics

        pred = tfp_bnn.predict(bnn, x_test, num_samples=NUM_SAMPLES, seed=0)
        probs = pred.probabilities
        print(f"test accuracy {metrics.accuracy(probs, y_test):.3f}, "
              f"NLL {metrics.nll(probs, y_test):.3f}, "
              f"ECE {metrics.expected_calibration_error(probs, y_test, num_bins=10):.3f}")

        # total = aleatoric + epistemic, example by example
        assert np.allclose(pred.predictive_entropy,
                           pred.expected_entropy + pred.mutual_information, atol=1e-5)
        print("\\n  true  predicted  p(predicted)  total  aleatoric  epistemic")
        for i in range(8):
            c = pred.predicted_class[i]
            print(f"{table.class_names[y_test[i]]:>10} {table.class_names[c]:>10} "
                  f"{pred.probabilities[i, c]:9.3f} {pred.predictive_entropy[i]:9.3f} "
                  f"{pred.expected_entropy[i]:9.3f} {pred.mutual_information[i]:9.3f}")
    """),
    md("""
        Far from the training data the weight samples disagree, and the epistemic part grows.
        The scaled training features lie in [0, 1]; here are points well outside:
    """),
    code("""
        far = np.array([[3.0, 3.0, 3.0, 3.0], [-2.0, 0.5, 3.0, -2.0]], dtype="float32")
        pred_far = tfp_bnn.predict(bnn, far, num_samples=NUM_SAMPLES, seed=0)
        print("mean epistemic uncertainty (mutual information): "
              f"test {pred.mutual_information.mean():.4f}, "
              f"far away {pred_far.mutual_information.mean():.4f}")
    """),
    md("""
        ## 5. Calibration

        A calibrated model is right 80 % of the time when it says 80 %. The reliability diagram
        bins the test predictions by confidence and compares each bin's accuracy with the
        diagonal; the expected calibration error (ECE) is the average gap. With 30 test flowers
        the bins are coarse. `tfp_bnn.plots` returns matplotlib figures (pass `path=` to save
        a PNG).
    """),
    code("""
        from tfp_bnn import plots

        plots.reliability_diagram(pred.probabilities, y_test, num_bins=10, title="Iris BNN")
    """),
    md("""
        ## 6. Export for TensorFlow Serving

        `export_savedmodel` writes `<export_dir>/<version>/` with three signatures:
        `serving_default` (S Monte Carlo samples inside the graph), `predict_with_samples` (S as
        an input) and `deterministic` (posterior means), plus TF Serving warmup records. The graph
        holds core TensorFlow ops only: the server needs neither TFP nor `tfp_bnn`.
    """),
    code("""
        export_path = tfp_bnn.export_savedmodel(bnn, os.path.join(WORKDIR, "iris_bnn"),
                                                num_samples=10)
        print(export_path)
        for root, _, files in sorted(os.walk(export_path)):
            for name in sorted(files):
                print("  ", os.path.relpath(os.path.join(root, name), export_path))
    """),
    md("""
        ## 7. Call it with a TF Serving REST request

        With the export behind TF Serving you would send

            curl -X POST http://localhost:8501/v1/models/iris_bnn:predict \\
              -d '{"signature_name": "serving_default", "instances": [[0.22, 0.62, 0.07, 0.04]]}'

        Without a server, `tfp_bnn.serving` loads the export the way TF Serving's C++ loader does
        (the MetaGraph into a Session) and answers the same JSON body; this is what
        `tfp-bnn serve-check EXPORT_PATH --body request.json` runs.
    """),
    code("""
        from tfp_bnn import serving

        session = serving.load_session(export_path)
        body = json.dumps({"signature_name": "serving_default", "instances": x_test[:2].tolist()})
        response = serving.rest_predict(session, body)
        print(json.dumps(response, indent=1))
    """),
    md("""
        The row format ("instances") returns one object per example. The columnar format
        ("inputs") also takes the scalar `num_samples` of `predict_with_samples`: more samples,
        less Monte Carlo noise in the served probabilities.
    """),
    code("""
        body = {"signature_name": "predict_with_samples",
                "inputs": {"features": x_test.tolist(), "num_samples": 200}}
        served = np.array(serving.rest_predict(session, body)["outputs"]["probabilities"])
        print("largest |served - tfp_bnn.predict| probability:",
              f"{np.abs(served - pred.probabilities).max():.3f} (Monte Carlo noise: 200 vs "
              f"{NUM_SAMPLES} samples)")
        agree = int((served.argmax(-1) == pred.predicted_class).sum())
        print(f"same predicted class for {agree} of {len(served)} test flowers")
        session.close()
    """),
    CLEANUP,
    md(f"""
        {CLOSING}

        * `tfp_bnn.bayesify(model, num_train_examples=N)` turns a Keras model into a Bayesian one
          trained with the ordinary `compile`/`fit`; its History holds `nll` and `kl`.
        * `tfp_bnn.predict` returns the predictive probabilities and splits the total uncertainty
          into aleatoric (expected entropy) and epistemic (mutual information) parts.
        * `tfp_bnn.plots.reliability_diagram` and `tfp_bnn.metrics` check calibration.
        * `tfp_bnn.export_savedmodel` writes a TF Serving model that samples inside the graph, and
          `tfp_bnn.serving` answers REST requests against it without a server.

        Next: a Bayesian CNN and out-of-distribution inputs in
        [02_bayesian_cnn_digits](02_bayesian_cnn_digits.ipynb).
    """),
]


# ---------------------------------------------------------------------------------------------
# 02 Bayesian CNN on 8x8 digits
# ---------------------------------------------------------------------------------------------
DIGITS = [
    header("02_bayesian_cnn_digits.ipynb", "A Bayesian CNN on handwritten digits", """
        A convolutional network whose `Conv2D` and `Dense` layers become Flipout layers, trained
        on scikit-learn's 8x8 digits (they ship with scikit-learn, no download). The network sees
        the digits 0-7 only; then we ask it about the digits 8 and 9, which it has never seen,
        and about noise images, and check that its epistemic uncertainty tells them apart.

        Last, two ways to start the posterior: from scratch, or from a trained deterministic
        network with MOPED (sigma = 0.1 |w|).
    """),
    INSTALL,
    setup(["time"], """
        DET_EPOCHS = 3 if FAST else 30      # deterministic CNN
        VI_EPOCHS = 3 if FAST else 60       # Bayesian CNN from scratch
        MOPED_EPOCHS = 2 if FAST else 15    # Bayesian CNN from the deterministic weights
        NUM_SAMPLES = 10 if FAST else 100
    """),
    md("""
        ## 1. Data: digits 0-7 in distribution, 8 and 9 and noise out of it

        1,797 grey 8x8 images with values 0-16, scaled to [0, 1].
    """),
    code("""
        from sklearn.datasets import load_digits

        from tfp_bnn import data

        images, labels = load_digits(return_X_y=True)
        images = (images / 16.0).astype("float32").reshape(-1, 8, 8, 1)
        known = labels < 8
        split = data.train_val_test_split(images[known], labels[known], test_fraction=0.3,
                                          val_fraction=0.1, seed=0)
        x_train, y_train = split.x_train, split.y_train
        x_val, y_val = split.x_val, split.y_val
        x_test, y_test = split.x_test, split.y_test
        x_unseen = images[~known]                     # the digits 8 and 9
        rng = np.random.default_rng(0)
        x_noise = np.clip(x_train.mean(0) + x_train.std(0) * rng.standard_normal((300, 8, 8, 1)),
                          0, 1).astype("float32")   # noise with the pixels' mean and spread
        print("train / val / test:", len(x_train), len(x_val), len(x_test),
              "| unseen 8/9:", len(x_unseen), "| noise:", len(x_noise))

        fig, axes = plt.subplots(1, 8, figsize=(9, 1.4))
        for ax, img, title in zip(axes, [x_train[0], x_train[1], x_train[2], x_unseen[0],
                                         x_unseen[1], x_noise[0], x_noise[1], x_noise[2]],
                                  ["train", "train", "train", "unseen", "unseen", "noise",
                                   "noise", "noise"]):
            ax.imshow(img[..., 0], cmap="gray_r")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        plt.show()
    """),
    md("""
        ## 2. The CNN, deterministic and Bayesian

        `bayesify` swaps `Conv2D` for `Conv2DFlipout` and `Dense` for `DenseFlipout`; pooling and
        flattening are copied unchanged.
    """),
    code("""
        def cnn():
            return tf_keras.Sequential([
                tf_keras.Input((8, 8, 1), name="image"),
                tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                tf_keras.layers.MaxPooling2D(2),
                tf_keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                tf_keras.layers.Flatten(),
                tf_keras.layers.Dense(64, activation="relu"),
                tf_keras.layers.Dense(8, name="logits"),
            ], name="cnn")


        def compiled(model, learning_rate=3e-3):
            model.compile(tf_keras.optimizers.Adam(learning_rate),
                          tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
            return model


        bnn = compiled(tfp_bnn.bayesify(cnn(), num_train_examples=len(x_train)))
        print([type(layer).__name__ for layer in bnn.layers])
    """),
    md("""
        ## 3. Train from scratch

        `tfp_bnn.callbacks.MCValidation` scores the Monte Carlo predictive on held-out data at the
        end of every epoch (Keras's own validation uses a single weight sample).
    """),
    code("""
        start = time.perf_counter()
        scratch_history = bnn.fit(
            x_train, y_train, epochs=VI_EPOCHS, batch_size=32, verbose=0,
            callbacks=[tfp_bnn.callbacks.MCValidation(x_val, y_val, num_samples=10, seed=0,
                                                      prefix="mc_val_")])
        scratch_seconds = time.perf_counter() - start
        print(f"{VI_EPOCHS} epochs in {scratch_seconds:.1f} s; MC validation accuracy "
              f"{scratch_history.history['mc_val_accuracy'][-1]:.3f}")
    """),
    md("""
        ## 4. Uncertainty in and out of distribution

        On the test digits the network should be sure; on unseen digits and noise its weight
        samples should disagree (epistemic uncertainty, the mutual information) and its
        predictive distribution should spread out (total uncertainty, the predictive entropy).
        The AUROC measures how well a score separates in from out (1 = perfectly, 0.5 = not at
        all).
    """),
    code("""
        from tfp_bnn import metrics, plots

        pred_test = tfp_bnn.predict(bnn, x_test, num_samples=NUM_SAMPLES, seed=0, verbose=0)
        pred_unseen = tfp_bnn.predict(bnn, x_unseen, num_samples=NUM_SAMPLES, seed=0, verbose=0)
        pred_noise = tfp_bnn.predict(bnn, x_noise, num_samples=NUM_SAMPLES, seed=0, verbose=0)
        print(f"test accuracy {metrics.accuracy(pred_test.probabilities, y_test):.3f}")

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
        for ax, field, label in zip(axes, ["mutual_information", "predictive_entropy"],
                                    ["epistemic: mutual information",
                                     "total: predictive entropy"]):
            values = [getattr(p, field) for p in (pred_test, pred_unseen, pred_noise)]
            edges = np.histogram_bin_edges(np.concatenate(values), bins=30)
            for v, name in zip(values, ["test digits 0-7", "unseen digits 8/9", "noise"]):
                ax.hist(v, bins=edges, density=True, alpha=0.5, label=name)
            ax.set(xlabel=label, ylabel="density")
            ax.legend()
        plt.show()

        for name, p in (("unseen 8/9", pred_unseen), ("noise", pred_noise)):
            print(f"AUROC test vs {name:10}: by mutual information "
                  f"{metrics.ood_auroc(pred_test.mutual_information, p.mutual_information):.3f}, "
                  f"by predictive entropy "
                  f"{metrics.ood_auroc(pred_test.predictive_entropy, p.predictive_entropy):.3f}")
    """),
    md("""
        The same comparison for one pair with `tfp_bnn.plots.uncertainty_histogram`, which puts
        the AUROC in the legend:
    """),
    code("""
        plots.uncertainty_histogram(pred_test.mutual_information, pred_unseen.mutual_information,
                                    label="mutual information", title="test 0-7 vs unseen 8/9")
    """),
    md("""
        The unseen images the network is least sure about, with its guess (it can only answer
        0-7):
    """),
    code("""
        order = np.argsort(-pred_unseen.mutual_information)[:8]
        fig, axes = plt.subplots(1, 8, figsize=(9, 1.6))
        for ax, i in zip(axes, order):
            ax.imshow(x_unseen[i, ..., 0], cmap="gray_r")
            ax.set_title(f"guess {pred_unseen.predicted_class[i]}\\n"
                         f"MI {pred_unseen.mutual_information[i]:.2f}", fontsize=7)
            ax.axis("off")
        plt.show()
    """),
    md("""
        ## 5. MOPED: start the posterior at a trained deterministic network

        Training a BNN from a random start is slow: the posterior means must first learn what a
        deterministic network learns, under the noise of the weight samples. MOPED (Krishnan et
        al. 2020) trains the deterministic network first, then starts each posterior at its
        weights `w` with `sigma = delta |w|` (here `delta = 0.1`) and fine-tunes a few epochs.
    """),
    code("""
        from tfp_bnn.posteriors import MeanField

        start = time.perf_counter()
        tf_keras.utils.set_random_seed(0)
        det = compiled(cnn())
        det.fit(x_train, y_train, epochs=DET_EPOCHS, batch_size=32, verbose=0)
        moped = tfp_bnn.bayesify(det, posterior=MeanField(from_weights=True, moped_delta=0.1),
                                 num_train_examples=len(x_train))
        moped = compiled(moped, learning_rate=1e-3)
        at_start = tfp_bnn.predict(moped, x_val, num_samples=10, seed=0)
        print(f"MOPED before fine-tuning: validation accuracy "
              f"{metrics.accuracy(at_start.probabilities, y_val):.3f}")
        moped_history = moped.fit(
            x_train, y_train, epochs=MOPED_EPOCHS, batch_size=32, verbose=0,
            callbacks=[tfp_bnn.callbacks.MCValidation(x_val, y_val, num_samples=10, seed=0,
                                                      prefix="mc_val_")])
        moped_seconds = time.perf_counter() - start
    """),
    code("""
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(np.arange(1, VI_EPOCHS + 1), scratch_history.history["mc_val_nll"],
                marker=".", label="from scratch")
        ax.plot(DET_EPOCHS + np.arange(1, MOPED_EPOCHS + 1), moped_history.history["mc_val_nll"],
                marker=".", label=f"MOPED (after {DET_EPOCHS} deterministic epochs)")
        ax.set(xlabel="epochs of training (deterministic + Bayesian)",
               ylabel="MC validation NLL", title="Validation NLL")
        ax.legend()
        plt.show()

        print(f"{'':12} {'accuracy':>9} {'NLL':>7} {'ECE':>7} {'AUROC 8/9':>10} "
              f"{'AUROC noise':>12} {'train s':>8}")
        for name, model, seconds in (("scratch", bnn, scratch_seconds),
                                     ("MOPED", moped, moped_seconds)):
            p = tfp_bnn.predict(model, x_test, num_samples=NUM_SAMPLES, seed=0, verbose=0)
            mi = {k: tfp_bnn.predict(model, x, num_samples=NUM_SAMPLES, seed=0,
                                     verbose=0).mutual_information
                  for k, x in (("unseen", x_unseen), ("noise", x_noise))}
            print(f"{name:12} {metrics.accuracy(p.probabilities, y_test):9.3f} "
                  f"{metrics.nll(p.probabilities, y_test):7.3f} "
                  f"{metrics.expected_calibration_error(p.probabilities, y_test):7.3f} "
                  f"{metrics.ood_auroc(p.mutual_information, mi['unseen']):10.3f} "
                  f"{metrics.ood_auroc(p.mutual_information, mi['noise']):12.3f} {seconds:8.1f}")
    """),
    md("""
        MOPED starts near the deterministic network's accuracy and needs a fraction of the
        Bayesian epochs. Its posterior scales come from the weights rather than from the data, so
        compare the out-of-distribution AUROCs too before choosing it: a small `moped_delta`
        gives a network that is nearly deterministic.
    """),
    md(f"""
        {CLOSING}

        * `bayesify` makes convolutional layers Bayesian too (`Conv2D` -> `Conv2DFlipout`) and
          copies the other layers unchanged.
        * The mutual information (epistemic) separates inputs unlike the training data, such as
          unseen classes and noise, from the test data; `metrics.ood_auroc` and
          `plots.uncertainty_histogram` measure and show it.
        * `tfp_bnn.callbacks.MCValidation` logs the Monte Carlo validation NLL and accuracy per
          epoch.
        * `MeanField(from_weights=True, moped_delta=0.1)` starts the posterior at a trained
          deterministic network (MOPED), which cuts the Bayesian training to a few epochs.

        Next: serving the model in [03_serving](03_serving.ipynb).
    """),
]


# ---------------------------------------------------------------------------------------------
# 03 Serving
# ---------------------------------------------------------------------------------------------
SERVING = [
    header("03_serving.ipynb", "Serving a Bayesian neural network with TensorFlow Serving", """
        The export of a `tfp_bnn` model runs the Monte Carlo sampling inside the TensorFlow
        graph, so TF Serving answers each request with the predictive probabilities *and* their
        uncertainty. This tutorial opens an export: its warmup records, its signatures, the
        server command, REST and gRPC requests (run against the loaded model, no network), and
        what 10 vs 100 samples per request cost.
    """),
    INSTALL,
    setup(["json", "shutil", "subprocess", "sys", "time"], """
        EPOCHS = 20 if FAST else 300
        LATENCY_REPEATS = 20 if FAST else 200
    """, workdir=True),
    md("""
        ## 1. A model to serve

        A small Bayesian MLP on the shipped Iris table (see
        [01_quickstart_iris](01_quickstart_iris.ipynb) for the details).
    """),
    code("""
        from tfp_bnn import data

        table = data.load_iris()
        scaler = data.MinMaxScaler().fit(table.features)
        x = scaler.transform(table.features).astype("float32")
        model = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                     tf_keras.layers.Dense(32, activation="relu"),
                                     tf_keras.layers.Dense(3, name="logits")])
        bnn = tfp_bnn.bayesify(model, num_train_examples=len(x))
        bnn.compile(tf_keras.optimizers.Adam(0.01),
                    tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        bnn.fit(x, table.labels, epochs=EPOCHS, batch_size=16, verbose=0)
        print("trained")
    """),
    md("""
        ## 2. Export, with warmup records

        TF Serving reads `<model_base_path>/<version>/` and serves the highest version. At load
        it replays the requests in `assets.extra/tf_serving_warmup_requests`, so the first real
        request does not pay for graph optimisation. `export_savedmodel` writes five: batches
        1, 8 and 64 to `serving_default`, one each to `predict_with_samples` and `deterministic`.
    """),
    code("""
        from tensorflow_serving.apis import prediction_log_pb2

        base_path = os.path.join(WORKDIR, "iris_bnn")
        export_path = tfp_bnn.export_savedmodel(bnn, base_path, num_samples=10)
        for root, _, files in sorted(os.walk(export_path)):
            for name in sorted(files):
                print(os.path.relpath(os.path.join(root, name), base_path))

        warmup_file = os.path.join(export_path, "assets.extra", "tf_serving_warmup_requests")
        print("\\nwarmup records:")
        for record in tf.data.TFRecordDataset(warmup_file):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = log.predict_log.request
            shapes = {k: [d.size for d in v.tensor_shape.dim] for k, v in request.inputs.items()}
            print(f"  {request.model_spec.signature_name:22} {shapes}")
    """),
    md("""
        ## 3. The signatures

        `saved_model_cli show --dir EXPORT_PATH --all` lists every signature with its inputs and
        outputs (dtype and shape; -1 is the batch dimension):
    """),
    code("""
        cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable),
                                                              "saved_model_cli")
        shown = subprocess.run([cli, "show", "--dir", export_path, "--all"], capture_output=True,
                               text=True, check=True)
        # The MetaGraph's SignatureDefs; the Python function listing that follows is left out.
        print(shown.stdout.split("\\nConcrete Functions:")[0])
    """),
    md("""
        The same from Python: the SignatureDefs of the MetaGraph as TF Serving's loader reads it
        (`tfp_bnn.serving.load_session` imports the MetaGraph into a v1 Session, as the C++
        server does).
    """),
    code("""
        from tfp_bnn import serving

        session = serving.load_session(export_path)
        def fmt(infos):
            return ", ".join(f"{k} {tf.dtypes.as_dtype(v.dtype).name}"
                             f"{[d.size for d in v.tensor_shape.dim]}"
                             for k, v in sorted(infos.items()))


        for name, sig in sorted(session.signatures.items()):
            if not name.startswith("__"):  # __saved_model_init_op restores variables at load
                print(f"{name}\\n  inputs:  {fmt(sig.inputs)}\\n  outputs: {fmt(sig.outputs)}")
    """),
    md("""
        ## 4. The server (not run here)

        The official container serves the base path; REST on port 8501, gRPC on 8500. Warmup
        records are replayed by default.

        ```bash
        docker run --rm -p 8500:8500 -p 8501:8501 \\
          --mount type=bind,source=/path/to/iris_bnn,target=/models/iris_bnn \\
          -e MODEL_NAME=iris_bnn -t tensorflow/serving
        ```

        or, with the binary: `tensorflow_model_server --port=8500 --rest_api_port=8501
        --model_name=iris_bnn --model_base_path=/path/to/iris_bnn`.

        ## 5. REST requests

        Row format (`instances`, one object per example in the response) and columnar format
        (`inputs`, which also carries the scalar `num_samples` of `predict_with_samples`). With a
        server you would `POST` the body to `http://localhost:8501/v1/models/iris_bnn:predict`;
        here `serving.rest_predict` answers it from the loaded session.
    """),
    code("""
        row_body = {"signature_name": "serving_default", "instances": x[:2].tolist()}
        print("POST /v1/models/iris_bnn:predict", json.dumps(row_body))
        print(json.dumps(serving.rest_predict(session, row_body), indent=1))

        columnar_body = {"signature_name": "predict_with_samples",
                         "inputs": {"features": x[:2].tolist(), "num_samples": 100}}
        print("\\nPOST /v1/models/iris_bnn:predict", json.dumps(columnar_body))
        print(json.dumps(serving.rest_predict(session, columnar_body), indent=1))
    """),
    md("""
        ## 6. gRPC requests

        A gRPC client sends a `PredictRequest` protocol buffer (from `tensorflow-serving-api`)
        and gets a `PredictResponse`. Against a server:

        ```python
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        channel = grpc.insecure_channel("localhost:8500")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=5.0)
        ```

        Here the request goes through its wire bytes and is answered by the loaded session, the
        way the server maps a request onto the signature's tensors.
    """),
    code("""
        from tensorflow_serving.apis import predict_pb2


        def answer(session, request):
            \"\"\"A PredictResponse for a PredictRequest, computed by the loaded session.\"\"\"
            signature = request.model_spec.signature_name or "serving_default"
            feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(request.model_spec)
            for k, v in session.run(signature, feeds).items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response


        request = predict_pb2.PredictRequest()
        request.model_spec.name = "iris_bnn"
        request.model_spec.signature_name = "predict_with_samples"
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(x[:3], dtype=tf.float32))
        request.inputs["num_samples"].CopyFrom(tf.make_tensor_proto(50, dtype=tf.int32))
        wire = request.SerializeToString()
        print(f"request: {len(wire)} bytes on the wire")

        response = answer(session, predict_pb2.PredictRequest.FromString(wire))
        for name in ("probabilities", "predictive_entropy", "mutual_information"):
            print(name, np.round(tf.make_ndarray(response.outputs[name]), 4).tolist())
    """),
    md("""
        The warmup records are `PredictRequest`s too; answering them is what the server does at
        load:
    """),
    code("""
        for record in tf.data.TFRecordDataset(warmup_file):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = log.predict_log.request
            response = answer(session, request)
            print(f"{request.model_spec.signature_name:22} -> "
                  f"{ {k: tf.make_ndarray(v).shape for k, v in sorted(response.outputs.items())} }")
    """),
    md("""
        ## 7. Latency: 10 vs 100 samples

        Every sample is one pass through the network, batched inside the graph. `serving_default`
        fixes S at export (10 here); `predict_with_samples` lets each request choose. Median and
        90th percentile over repeated calls of the session, after one warm-up call:
    """),
    code("""
        def latency_ms(batch, num_samples, repeats=LATENCY_REPEATS):
            feeds = {"features": np.resize(x, (batch, 4)), "num_samples": np.int32(num_samples)}
            session.run("predict_with_samples", feeds)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                session.run("predict_with_samples", feeds)
                times.append(1000 * (time.perf_counter() - start))
            return np.percentile(times, [50, 90])


        batches, samples = (1, 64), (10, 100)
        results = {(b, s): latency_ms(b, s) for b in batches for s in samples}
        for (b, s), (p50, p90) in results.items():
            print(f"batch {b:3}, S = {s:3}: median {p50:6.2f} ms, p90 {p90:6.2f} ms")

        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.35
        for i, s in enumerate(samples):
            ax.bar(np.arange(len(batches)) + (i - 0.5) * width,
                   [results[(b, s)][0] for b in batches], width, label=f"S = {s}")
        ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
        ax.set(ylabel="median latency (ms)", title="predict_with_samples latency")
        ax.legend()
        plt.show()
        session.close()
    """),
    md("""
        At batch 1 the fixed cost of a call dominates and 100 samples cost little more than 10;
        with larger batches the cost grows with S x batch. The Monte Carlo error of the
        probabilities falls as 1/sqrt(S): choose S per request with `predict_with_samples` when
        some requests need more precision.
    """),
    CLEANUP,
    md(f"""
        {CLOSING}

        * An export holds three signatures (`serving_default`, `predict_with_samples`,
          `deterministic`) and warmup records; `saved_model_cli show --all` or the SignatureDefs
          from Python list their inputs and outputs.
        * TF Serving serves it with the stock container; no TFP or `tfp_bnn` on the server.
        * REST bodies (row or columnar format) and gRPC `PredictRequest`s can be built and checked
          offline against the loaded export with `tfp_bnn.serving`.
        * The latency of S samples: nearly flat in S at batch 1, growing with S x batch.

        Next: regression with aleatoric and epistemic bands in
        [04_regression_uncertainty](04_regression_uncertainty.ipynb).
    """),
]


# ---------------------------------------------------------------------------------------------
# 04 Regression
# ---------------------------------------------------------------------------------------------
REGRESSION = [
    header("04_regression_uncertainty.ipynb", "Regression: aleatoric vs epistemic uncertainty", """
        A Bayesian network with a heteroscedastic Gaussian head predicts, for each input, a mean
        and a noise level. Sampling its weights then separates two kinds of uncertainty:

        * **aleatoric**, the noise in the data, which no amount of data removes: the predicted
          noise variance, averaged over weight samples;
        * **epistemic**, the model's ignorance, which more data would remove: the variance of the
          predicted mean across weight samples.

        The toy data are generated here: a sine with noise that grows from left to right, and a
        gap without data in the middle.
    """),
    INSTALL,
    setup((), """
        EPOCHS = 150 if FAST else 1500
        NUM_SAMPLES = 20 if FAST else 200
    """),
    md("""
        ## 1. Toy data with a gap

        `y = sin(x) + noise`, the noise standard deviation growing from 0.05 at `x = -4` to 0.45
        at `x = 4`, and no data for `-1 < x < 1`.
    """),
    code("""
        def noise_std(x):
            return 0.05 + 0.05 * (x + 4.0)


        rng = np.random.default_rng(0)
        x_train = np.concatenate([rng.uniform(-4, -1, 200), rng.uniform(1, 4, 200)])
        y_train = np.sin(x_train) + noise_std(x_train) * rng.standard_normal(x_train.shape)
        x_train, y_train = x_train[:, None].astype("float32"), y_train[:, None].astype("float32")
        grid = np.linspace(-6, 6, 400, dtype="float32")[:, None]

        plt.figure(figsize=(8, 3))
        plt.scatter(x_train, y_train, s=5, color="black", label="training data")
        plt.plot(grid, np.sin(grid), color="gray", linestyle="--", label="sin(x)")
        plt.axvspan(-1, 1, color="gray", alpha=0.1, label="gap")
        plt.legend()
        plt.show()
    """),
    md("""
        ## 2. A Gaussian head, made Bayesian

        `tfp_bnn.heads.GaussianHead` turns the `Dense(2)` output into `(mean, std)` with
        `std = softplus(raw) + min_scale`; `tfp_bnn.losses.GaussianNLL` is the matching
        likelihood. `bayesify` makes the `Dense` layers Bayesian and copies the head unchanged.

        With 400 points and some 4,400 weights, the full KL term (weight 1/N) pulls the
        posterior back to the prior so hard that the network underfits (set `temperature=1.0`
        below to see it). `tfp_bnn.callbacks.KLTemperature(0.1)` trains on a tempered ELBO,
        `NLL + 0.1 KL / N`, a common remedy on small data sets.
    """),
    code("""
        model = tf_keras.Sequential([
            tf_keras.Input((1,), name="x"),
            tf_keras.layers.Dense(64, activation="tanh"),
            tf_keras.layers.Dense(64, activation="tanh"),
            tf_keras.layers.Dense(2),
            tfp_bnn.heads.GaussianHead(),
        ])
        bnn = tfp_bnn.bayesify(model, num_train_examples=len(x_train))
        bnn.compile(tf_keras.optimizers.Adam(0.01), tfp_bnn.losses.GaussianNLL())
        history = bnn.fit(x_train, y_train, epochs=EPOCHS, batch_size=50, verbose=0,
                          callbacks=[tfp_bnn.callbacks.KLTemperature(temperature=0.1)])

        plt.figure(figsize=(5, 3))
        plt.plot(history.history["nll"], label="Gaussian NLL")
        plt.plot(history.history["kl"], label="0.1 KL / N")
        plt.xlabel("epoch")
        plt.legend()
        plt.show()
    """),
    md("""
        ## 3. The two bands

        `tfp_bnn.predict` recognises the Gaussian head and returns `mean`, `aleatoric_variance`
        (mean of the predicted variances over the S weight samples), `epistemic_variance`
        (variance of the predicted means) and their sum `variance`.
    """),
    code("""
        pred = tfp_bnn.predict(bnn, grid, num_samples=NUM_SAMPLES, seed=0, verbose=0)
        mean = pred.mean[:, 0]
        aleatoric = np.sqrt(pred.aleatoric_variance[:, 0])
        epistemic = np.sqrt(pred.epistemic_variance[:, 0])
        total = np.sqrt(pred.variance[:, 0])
        g = grid[:, 0]

        fig, (ax, ax_std) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        ax.fill_between(g, mean - 2 * total, mean + 2 * total, color="tab:orange", alpha=0.25,
                        label="±2 total std (aleatoric + epistemic)")
        ax.fill_between(g, mean - 2 * epistemic, mean + 2 * epistemic, color="tab:blue",
                        alpha=0.45, label="±2 epistemic std")
        ax.scatter(x_train, y_train, s=4, color="black", label="training data")
        ax.plot(g, mean, color="tab:blue", label="predictive mean")
        ax.plot(g, np.sin(g), color="gray", linestyle="--", label="sin(x)")
        ax.axvspan(-1, 1, color="gray", alpha=0.1)
        ax.set(ylim=(-3, 3), ylabel="y")
        ax.legend(loc="lower right", fontsize=8)

        ax_std.plot(g, aleatoric, color="tab:orange", label="aleatoric std (predicted noise)")
        ax_std.plot(g, epistemic, color="tab:blue", label="epistemic std")
        inside = np.abs(g) <= 4
        ax_std.plot(g[inside], noise_std(g[inside]), color="black", linestyle=":",
                    label="true noise std")
        ax_std.axvspan(-1, 1, color="gray", alpha=0.1)
        ax_std.set(xlabel="x", ylabel="standard deviation", ylim=(0, None))
        ax_std.legend(loc="upper left", fontsize=8)
        plt.show()
    """),
    code("""
        def where(lo, hi):
            return (g > lo) & (g < hi)


        for name, mask in (("with data (1 < |x| < 4)", where(-4, -1) | where(1, 4)),
                           ("in the gap (|x| < 1)", where(-1, 1)),
                           ("outside (|x| > 4)", ~where(-4, 4))):
            print(f"{name:24} mean aleatoric std {aleatoric[mask].mean():.3f}, "
                  f"mean epistemic std {epistemic[mask].mean():.3f}")
    """),
    md("""
        The aleatoric band follows the noise in the data, small on the left and wide on the
        right; in the gap it only interpolates between the two sides. The epistemic band is
        narrow where there are data and widens in the gap, where the weight samples disagree
        because no data constrained them. Beyond the data the tanh units saturate, so this
        network extrapolates flat curves with only a little more epistemic uncertainty: what
        "unknown" looks like depends on the architecture and the prior. (In fast mode the
        network is barely trained and the bands are rough.)
    """),
    md(f"""
        {CLOSING}

        * A `Dense(2)` + `tfp_bnn.heads.GaussianHead()` output with `tfp_bnn.losses.GaussianNLL()`
          lets the network predict its own noise level (heteroscedastic regression).
        * `bayesify` + `tfp_bnn.predict` then split the predictive variance into aleatoric (the
          predicted noise) and epistemic (disagreement between weight samples) parts.
        * Aleatoric uncertainty tracks the data noise; epistemic uncertainty grows where data are
          missing, here in the gap.
        * On small data sets the full KL term can make a BNN underfit;
          `tfp_bnn.callbacks.KLTemperature` tempers it.

        Next: other uncertainty methods on one table in
        [05_methods_compared](05_methods_compared.ipynb).
    """),
]


# ---------------------------------------------------------------------------------------------
# 05 Methods compared
# ---------------------------------------------------------------------------------------------
METHODS = [
    header("05_methods_compared.ipynb",
           "Uncertainty methods compared: VI, MC dropout, ensembles, SWAG, Laplace", """
        `tfp_bnn` puts five ways of getting uncertainty from a Keras network behind one
        interface: each gives a tf_keras model that `tfp_bnn.predict` samples and
        `tfp_bnn.export_savedmodel` exports. Here they share one MLP backbone on scikit-learn's
        8x8 digits (digits 0-7 for training; 8 and 9 as out-of-distribution inputs), one table
        and one figure.

        | Method | What is random at prediction | Cost |
        |---|---|---|
        | VI (Flipout), `bayesify` | weights drawn from the learned Gaussian posterior | 2x parameters, slower training |
        | MC dropout, `mc_dropout` | dropout masks, kept on at test time | one network |
        | Deep ensemble, `DeepEnsemble` | which of M independently trained networks | M trainings |
        | SWAG, `callbacks.SWAG` | weights from a Gaussian fitted to the SGD trajectory | a few extra epochs |
        | Laplace, `laplace` | last-layer weights from a Gaussian at the trained optimum | one pass over the data |

        For the full benchmark (more seeds, Iris as well) run `scripts/compare_methods.py` from
        the repository.
    """),
    INSTALL,
    setup(["time", "warnings"], """
        EPOCHS = 3 if FAST else 40          # deterministic net, ensemble members, MC dropout
        VI_EPOCHS = 3 if FAST else 120
        SWAG_EPOCHS = 3 if FAST else 30     # extra epochs collecting SWAG moments
        MEMBERS = 3 if FAST else 5
        NUM_SAMPLES = 10 if FAST else 100
    """),
    code("""
        from sklearn.datasets import load_digits

        from tfp_bnn import data, metrics

        images, labels = load_digits(return_X_y=True)
        images = (images / 16.0).astype("float32")
        known = labels < 8
        split = data.train_val_test_split(images[known], labels[known], test_fraction=0.3,
                                          val_fraction=0.1, seed=0)
        x_train = np.concatenate([split.x_train, split.x_val])
        y_train = np.concatenate([split.y_train, split.y_val])
        x_test, y_test, x_ood = split.x_test, split.y_test, images[~known]
        print("train / test / out of distribution:", len(x_train), len(x_test), len(x_ood))


        def backbone():
            return tf_keras.Sequential([tf_keras.Input((64,), name="pixels"),
                                        tf_keras.layers.Dense(64, activation="relu"),
                                        tf_keras.layers.Dense(64, activation="relu"),
                                        tf_keras.layers.Dense(8, name="logits")], name="mlp")


        def compiled(model):
            model.compile(tf_keras.optimizers.Adam(1e-3),
                          tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            return model


        def fit(model, epochs, callbacks=()):
            start = time.perf_counter()
            model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0,
                      callbacks=list(callbacks))
            return time.perf_counter() - start
    """),
    md("""
        ## 1. Train every method

        Each entry of `trained` is a tf_keras model ready for `tfp_bnn.predict`, and the seconds
        it took to train (the deterministic network's time included for the post-hoc methods,
        SWAG and Laplace).
    """),
    code("""
        trained = {}

        tf_keras.utils.set_random_seed(0)
        det = compiled(backbone())
        det_seconds = fit(det, EPOCHS)
        trained["Deterministic"] = (det, det_seconds)

        tf_keras.utils.set_random_seed(0)
        vi = compiled(tfp_bnn.bayesify(backbone(), estimator="flipout",
                                       num_train_examples=len(x_train)))
        trained["VI (Flipout)"] = (vi, fit(vi, VI_EPOCHS))

        tf_keras.utils.set_random_seed(0)
        mcd = compiled(tfp_bnn.mc_dropout(backbone(), rate=0.1, where="before_dense"))
        trained["MC dropout"] = (mcd, fit(mcd, EPOCHS))

        ensemble = tfp_bnn.DeepEnsemble(lambda: compiled(backbone()), num_members=MEMBERS, seed=0)
        start = time.perf_counter()
        ensemble.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
        trained[f"Ensemble ({MEMBERS})"] = (ensemble.as_model(), time.perf_counter() - start)

        # SWAG: continue training a copy of the deterministic net, collecting weight moments.
        swag_net = compiled(tf_keras.models.clone_model(det))
        swag_net.set_weights(det.get_weights())
        swag = tfp_bnn.callbacks.SWAG(start_epoch=0, max_rank=10)
        swag_seconds = fit(swag_net, SWAG_EPOCHS, [swag])
        trained["SWAG"] = (swag.as_model(scale=0.5), det_seconds + swag_seconds)

        start = time.perf_counter()
        la = tfp_bnn.laplace(det, x_train, y_train, subset="last_layer", hessian="kron",
                             prior_precision="marglik")
        trained["Laplace (last layer)"] = (la.as_model(), det_seconds + time.perf_counter() - start)
        print({name: f"{seconds:.1f} s" for name, (_, seconds) in trained.items()})
    """),
    md("""
        ## 2. One table

        Accuracy, NLL and expected calibration error (ECE) on the test digits; AUROC of telling
        the unseen digits 8/9 from the test digits by the predictive entropy (total uncertainty)
        and by the mutual information (epistemic; zero for the deterministic network);
        milliseconds to predict 1,000 examples with S samples (the ensemble uses its M members).
    """),
    code("""
        import pandas as pd

        predictions, rows = {}, []
        for name, (model, seconds) in trained.items():
            s = {"Deterministic": 1, f"Ensemble ({MEMBERS})": MEMBERS}.get(name, NUM_SAMPLES)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the deterministic net: variance 0
                p_in = tfp_bnn.predict(model, x_test, num_samples=s, seed=0, verbose=0)
                p_out = tfp_bnn.predict(model, x_ood, num_samples=s, seed=0, verbose=0)
                x1000 = np.resize(x_test, (1000, 64))
                tfp_bnn.predict(model, x1000, num_samples=s, seed=0, verbose=0)  # trace once
                start = time.perf_counter()
                tfp_bnn.predict(model, x1000, num_samples=s, seed=0, verbose=0)
                predict_ms = 1000 * (time.perf_counter() - start)
            predictions[name] = (p_in, p_out)
            rows.append({
                "method": name,
                "accuracy": metrics.accuracy(p_in.probabilities, y_test),
                "NLL": metrics.nll(p_in.probabilities, y_test),
                "ECE": metrics.expected_calibration_error(p_in.probabilities, y_test),
                "AUROC 8/9 (entropy)": metrics.ood_auroc(p_in.predictive_entropy,
                                                         p_out.predictive_entropy),
                "AUROC 8/9 (MI)": (metrics.ood_auroc(p_in.mutual_information,
                                                      p_out.mutual_information)
                                   if name != "Deterministic" else float("nan")),
                "train s": seconds,
                "predict ms / 1k": predict_ms,
            })
        table = pd.DataFrame(rows).set_index("method").round(3)
        table
    """),
    md("""
        ## 3. One figure

        Top: reliability of each method (bars on the diagonal = calibrated). Bottom: predictive
        entropy on test digits vs unseen 8/9 (separated = useful for out-of-distribution
        detection).
    """),
    code("""
        fig, axes = plt.subplots(2, len(predictions), figsize=(2.6 * len(predictions), 5.2))
        for j, (name, (p_in, p_out)) in enumerate(predictions.items()):
            bins = metrics.calibration_bins(p_in.probabilities, y_test, num_bins=10)
            ax = axes[0, j]
            ax.bar(bins.edges[:-1], np.nan_to_num(bins.accuracy), width=np.diff(bins.edges),
                   align="edge", edgecolor="black", linewidth=0.5)
            ax.plot([0, 1], [0, 1], "--", color="gray")
            ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name}\\nECE {table.loc[name, 'ECE']:.3f}",
                   xlabel="confidence")
            ax.title.set_fontsize(9)
            ax = axes[1, j]
            edges = np.histogram_bin_edges(np.concatenate([p_in.predictive_entropy,
                                                           p_out.predictive_entropy]), bins=20)
            ax.hist(p_in.predictive_entropy, bins=edges, alpha=0.5, density=True, label="test 0-7")
            ax.hist(p_out.predictive_entropy, bins=edges, alpha=0.5, density=True,
                    label="unseen 8/9")
            ax.set(xlabel="predictive entropy",
                   title=f"AUROC {table.loc[name, 'AUROC 8/9 (entropy)']:.3f}")
            ax.title.set_fontsize(9)
        axes[0, 0].set_ylabel("accuracy")
        axes[1, 0].set_ylabel("density")
        axes[1, 0].legend(fontsize=7)
        fig.tight_layout()
        plt.show()
    """),
    md("""
        Read the table with the seeds in mind: this is one training run of a small network, and
        the differences between the Bayesian methods are often within the spread between seeds
        (`scripts/compare_methods.py --seeds 3` reports means and standard deviations). In fast
        mode the networks are barely trained and the numbers mean little.
    """),
    md(f"""
        {CLOSING}

        * VI (`bayesify`), MC dropout (`mc_dropout`), deep ensembles (`DeepEnsemble`), SWAG
          (`callbacks.SWAG`) and last-layer Laplace (`laplace`) all produce tf_keras models that
          `tfp_bnn.predict` samples and `tfp_bnn.export_savedmodel` exports.
        * `tfp_bnn.metrics` scores them the same way: accuracy, NLL, ECE and out-of-distribution
          AUROC by predictive entropy or mutual information.
        * The methods differ mostly in cost: training time (VI, ensembles), extra epochs (SWAG), a
          pass over the data (Laplace) or nothing but dropout (MC dropout), and in prediction
          time, which grows with the number of samples or members.
    """),
]


NOTEBOOKS = {
    "01_quickstart_iris.ipynb": QUICKSTART,
    "02_bayesian_cnn_digits.ipynb": DIGITS,
    "03_serving.ipynb": SERVING,
    "04_regression_uncertainty.ipynb": REGRESSION,
    "05_methods_compared.ipynb": METHODS,
}


def build(name):
    """The notebook ``name`` as an nbformat NotebookNode, without outputs."""
    nb = v4.new_notebook()
    nb.cells = [nbformat.from_dict(cell) for cell in NOTEBOOKS[name]]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{os.path.splitext(name)[0][:2]}-{i:02d}"  # stable ids: no diff noise
    nb.metadata = {
        "colab": {"provenance": [], "toc_visible": True},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def text(name):
    return nbformat.writes(build(name)) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = []
    for name in NOTEBOOKS:
        path = os.path.join(HERE, name)
        want = text(name)
        if check:
            with open(path, encoding="utf-8") as f:
                if f.read() != want:
                    stale.append(name)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(want)
            print("wrote", path)
    if stale:
        print("out of date (run python tutorials/_build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
