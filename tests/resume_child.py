"""A training that tests/test_resume.py kills and runs again: Keras fit over a RootSequence with BackupAndRestore.

Every batch the model trains on is logged as it reaches the model (an eager
layer): ``<keras epoch> <batch> <uid,uid,...>``, one line each, flushed. Run as
``python resume_child.py LOG BACKUP EPOCHS SAVE_FREQ FILE...`` (SAVE_FREQ a number of batches, or
``epoch`` for a checkpoint at each epoch's end, kept double). A validation sequence is evaluated after each epoch.
"""

from __future__ import annotations

import sys

import keras
import numpy as np

import mlaas4hep
from mlaas4hep import RootSequence


def main(argv: list[str]) -> int:
    log_path, backup, epochs, save_freq, *files = argv
    options = {"branches": ["uid", "MET_pt", "Jet_pt"], "normalization": None, "batch_size": 100, "chunk_size": 700}
    seq = RootSequence(files, labels=[1.0, 0.0], seed=7, **options)
    val = RootSequence(files, labels=[1.0, 0.0], seed=8, specs=seq.specs, nevts=500, **options)  # validated each epoch
    col = seq.feature_names.index("uid")
    log = open(log_path, "a", buffering=1)  # open for the process's life: it is killed at any time
    where = {"epoch": -1, "batch": 0}

    class Where(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            where.update(epoch=epoch, batch=0)

        def on_train_batch_end(self, batch, logs=None):
            where["batch"] = batch + 1

    class Record(keras.layers.Layer):
        """Notes the uids of each batch trained on (not those validated)."""

        def call(self, x, training=None):
            if not training or x.shape[0] is None:  # validation, or the symbolic tensor of building the model
                return x
            try:
                ids = np.asarray(keras.ops.convert_to_numpy(x))[:, col].astype(np.int64)
            except Exception:  # noqa: BLE001 - JAX traces the model to build it: no values, no batch
                return x
            log.write(f"{where['epoch']} {where['batch']} {','.join(map(str, ids))}\n")
            return x

    inputs = keras.Input((seq.num_features,))
    hidden = Record()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Rescaling(1e-6)(hidden)))
    model.compile(optimizer="adam", loss="binary_crossentropy", run_eagerly=True)
    every = save_freq if save_freq == "epoch" else int(save_freq)
    backup_cb = mlaas4hep.BackupAndRestore(
        backup, sequence=seq, save_freq=every, double_checkpoint=every == "epoch", delete_checkpoint=False
    )
    model.fit(seq, validation_data=val, epochs=int(epochs), verbose=0, callbacks=[Where(), backup_cb])
    log.write("done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
