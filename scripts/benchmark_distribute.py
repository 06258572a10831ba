"""Training step time of a bayesified MLP and small CNN: 1 vs 2 logical CPU devices (and a GPU).

    python scripts/benchmark_distribute.py [--steps 30] [--batch-size 256] [--repeats 3]

The two logical CPUs are one physical CPU split by `tf.config.set_logical_device_configuration`
(done before TensorFlow initialises its devices): MirroredStrategy then runs each replica's half
batch on the same cores, so the table shows the cost of replication (splitting the batch, the
all-reduce), not a speed-up; real gains need several GPUs or machines. A GPU, when present,
gets a OneDeviceStrategy row. Prints a markdown table: median ms per global step over
``--repeats`` timed epochs of ``--steps`` steps, after one warm-up epoch (tracing).
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _models(tf_keras):
    L = tf_keras.layers
    mlp = tf_keras.Sequential([tf_keras.Input((64,)), L.Dense(256, activation="relu"),
                               L.Dense(256, activation="relu"), L.Dense(10)], name="mlp")
    cnn = tf_keras.Sequential([tf_keras.Input((28, 28, 1)), L.Conv2D(16, 3, activation="relu"),
                               L.MaxPooling2D(), L.Conv2D(32, 3, activation="relu"),
                               L.MaxPooling2D(), L.Flatten(), L.Dense(10)], name="cnn")
    return {"MLP 64-256-256-10": mlp, "CNN conv16-conv32-dense10": cnn}


def _time_step(strategy, source, shape, steps, batch_size, repeats):
    import numpy as np

    import tfp_bnn
    from tfp_bnn._keras import tf, tf_keras

    n = steps * batch_size
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n,) + shape).astype("float32")
    y = rng.integers(0, 10, size=n).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().prefetch(2)
    with strategy.scope():
        bnn = tfp_bnn.bayesify(source, num_train_examples=data)
        bnn.compile(tf_keras.optimizers.Adam(1e-3),
                    tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bnn.fit(data, epochs=1, verbose=0)  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bnn.fit(data, epochs=1, verbose=0)
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per timed epoch")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs (median)")
    args = parser.parse_args(argv)

    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfp_bnn._keras import tf_keras

    configs = [("1 CPU device", lambda: tf.distribute.OneDeviceStrategy("/cpu:0")),
               ("2 logical CPUs (Mirrored)",
                lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]
    if tf.config.list_physical_devices("GPU"):
        configs.append(("1 GPU", lambda: tf.distribute.OneDeviceStrategy("/gpu:0")))
    rows = []
    for name, make in configs:
        strategy = make()  # one per config: two MirroredStrategy objects share collective keys
        for model_name, source in _models(tf_keras).items():
            shape = tuple(source.input_shape[1:])
            ms = _time_step(strategy, source, shape, args.steps, args.batch_size, args.repeats)
            rows.append((model_name, name, ms))
    print(f"\nbatch {args.batch_size}, {args.steps} steps per epoch, median of {args.repeats}; "
          f"{os.cpu_count()} CPU cores\n")
    print("| model | devices | ms / step | examples / s |")
    print("|---|---|---:|---:|")
    for model_name, name, ms in sorted(rows, key=lambda r: r[0]):
        print(f"| {model_name} | {name} | {ms:.1f} | {args.batch_size / ms * 1e3:,.0f} |")


if __name__ == "__main__":
    main()
