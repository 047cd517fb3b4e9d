"""A training that tests/test_resume.py kills and runs again: Keras fit over a RootSequence with BackupAndRestore.

Every batch the model trains on is logged as it reaches the model (an eager
layer): ``<keras epoch> <batch> <uid,uid,...>``, one line each, flushed. Run as
``python resume_child.py LOG BACKUP EPOCHS SAVE_FREQ FILE...``.
"""

from __future__ import annotations

import sys

import keras
import numpy as np

import mlaas4hep
from mlaas4hep import RootSequence


def main(argv: list[str]) -> int:
    log_path, backup, epochs, save_freq, *files = argv
    seq = RootSequence(
        files,
        labels=[1.0, 0.0],
        branches=["uid", "MET_pt", "Jet_pt"],
        normalization=None,
        batch_size=100,
        chunk_size=700,
        seed=7,
    )
    col = seq.feature_names.index("uid")
    log = open(log_path, "a", buffering=1)  # open for the process's life: it is killed at any time
    where = {"epoch": -1, "batch": 0}

    class Where(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            where.update(epoch=epoch, batch=0)

        def on_train_batch_end(self, batch, logs=None):
            where["batch"] = batch + 1

    def record(x):
        if x.shape[0] is None:  # the symbolic tensor of building the model
            return x
        try:
            ids = np.asarray(keras.ops.convert_to_numpy(x))[:, col].astype(np.int64)
        except Exception:  # noqa: BLE001 - JAX traces the model to build it: no values, no batch
            return x
        log.write(f"{where['epoch']} {where['batch']} {','.join(map(str, ids))}\n")
        return x

    inputs = keras.Input((seq.num_features,))
    hidden = keras.layers.Lambda(record, output_shape=(seq.num_features,))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Rescaling(1e-6)(hidden)))
    model.compile(optimizer="adam", loss="binary_crossentropy", run_eagerly=True)
    backup_cb = mlaas4hep.BackupAndRestore(backup, sequence=seq, save_freq=int(save_freq), delete_checkpoint=False)
    model.fit(seq, epochs=int(epochs), verbose=0, callbacks=[Where(), backup_cb])
    log.write("done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
