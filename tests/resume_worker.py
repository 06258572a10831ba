"""Subprocess side of tests/test_resume.py: train with BackupAndRestore, optionally die mid-epoch.

    python tests/resume_worker.py BACKUP_DIR OUT_PREFIX [KILL_AFTER_STEP]

Writes OUT_PREFIX.steps (one line per step: optimizer step and the KL weight it trained with,
appended, so a killed run and its resumption add up) and, when training ends,
OUT_PREFIX.npz (the final weights) and OUT_PREFIX.json (History).
"""
import json
import os
import sys

N, BATCH, EPOCHS = 48, 8, 3  # 6 steps per epoch, 18 in all
# "epoch": tf_keras restores an int save_freq's step count but replays the epoch's data from
# its first batch, so only an epoch-boundary backup resumes onto the same trajectory.
SAVE_FREQ = "epoch"


def main(backup_dir, out, kill_after=None):
    import numpy as np

    import tfp_bnn
    from tfp_bnn import callbacks, posteriors
    from tfp_bnn._keras import tf_keras

    tf_keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 5)).astype("float32")
    y = (x[:, 0] - x[:, 1] > 0).astype("int32")
    source = tf_keras.Sequential([tf_keras.Input((5,)),
                                  tf_keras.layers.Dense(8, activation="tanh"),
                                  tf_keras.layers.Dense(2)])
    # sigma = 1e-20: every draw is the posterior mean, so a rerun follows the same trajectory
    bnn = tfp_bnn.bayesify(source, posterior=posteriors.MeanField(init_scale=1e-20),
                           num_train_examples=N)
    bnn.compile(tf_keras.optimizers.Adam(0.01),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Record(tf_keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            weight = float(tfp_bnn.kl_weights(self.model)["dense"])
            with open(out + ".steps", "a") as f:
                f.write(json.dumps([step, weight]) + "\n")

        def on_train_batch_end(self, batch, logs=None):
            if kill_after is not None and int(self.model.optimizer.iterations.numpy()) == kill_after:
                os._exit(3)  # no cleanup, no final checkpoint: as if the machine died

    history = bnn.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
        callbacks=[callbacks.KLAnnealing(warmup_epochs=2, start=0.1),
                   tf_keras.callbacks.BackupAndRestore(backup_dir, save_freq=SAVE_FREQ),
                   Record()]).history
    np.savez(out + ".npz", *[w.numpy() for w in bnn.weights])
    with open(out + ".json", "w") as f:
        json.dump(history, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
