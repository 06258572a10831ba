"""Subprocess side of tests/test_distribute.py: train one small BNN and write its per-step logs.

    python tests/distribute_worker.py mirrored OUT.json          # 1 device, then 2 logical CPUs
    python tests/distribute_worker.py worker I PORT0,PORT1 OUT.json   # MultiWorkerMirrored, task I

Logical devices and TF_CONFIG must be set before TensorFlow initialises its devices, so each
configuration runs in a fresh process. Data, seed and model are the same everywhere; the
posterior starts at sigma = 1e-20, so every weight draw is the posterior mean to float32
precision: replicas see the same network whatever noise they draw, the NLL is exact, and the
KL (closed form) still pulls mu and rho, so a KL counted per replica changes the trajectory.
"""
import json
import os
import sys

N, BATCH, EPOCHS, LR = 32, 8, 2, 0.1


def _data():
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 5)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32") + (x[:, 2] > 0.5).astype("int32")
    return x, y


def _train(strategy):
    import numpy as np

    import tfp_bnn
    from tfp_bnn import posteriors
    from tfp_bnn._keras import tf, tf_keras

    tf_keras.utils.set_random_seed(0)
    x, y = _data()
    with strategy.scope():
        source = tf_keras.Sequential([tf_keras.Input((5,)),
                                      tf_keras.layers.Dense(8, activation="tanh"),
                                      tf_keras.layers.Dense(3)])
        bnn = tfp_bnn.bayesify(source, posterior=posteriors.MeanField(init_scale=1e-20),
                               num_train_examples=N)
        bnn.compile(tf_keras.optimizers.SGD(LR),
                    tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps = []

    class Record(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append({k: float(logs[k]) for k in ("loss", "nll", "kl")})

    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    history = bnn.fit(data, epochs=EPOCHS, verbose=0, callbacks=[Record()]).history
    weights = {w.name: np.asarray(w.numpy()).tolist() for w in bnn.weights}
    return {"steps": steps, "history": history, "weights": weights,
            "replicas": strategy.num_replicas_in_sync}


def _replica_noise(strategy):
    """Outputs of one Flipout and one reparameterisation layer, per replica, on the same input."""
    import numpy as np

    from tfp_bnn import layers as bl
    from tfp_bnn._keras import tf

    out = {}
    for cls in (bl.DenseFlipout, bl.DenseReparameterization):
        with strategy.scope():
            layer = cls(4, kl_weight=1.0)
            layer.build((None, 3))

        @tf.function
        def step(x, layer=layer):
            return strategy.run(layer, args=(x,))

        result = step(tf.ones((2, 3)))
        out[cls.__name__] = [np.asarray(v).tolist()
                             for v in strategy.experimental_local_results(result)]
    return out


def main(argv):
    if argv[0] == "mirrored":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        result = {"single": _train(tf.distribute.OneDeviceStrategy("/cpu:0")),
                  "mirrored": _train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))}
        result["noise"] = _replica_noise(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
        out = argv[1]
    else:
        index, ports, out = int(argv[1]), argv[2].split(","), argv[3]
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index}})
        import tensorflow as tf
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        result = {"multi_worker": _train(strategy), "noise": _replica_noise(strategy)}
        out = f"{out}.worker{index}"
    with open(out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1:])
