"""BackupAndRestore: Keras' fault-tolerance callback, with the loader's place saved beside the weights.

Keras' own ``keras.callbacks.BackupAndRestore`` restores the weights and the
epoch number, and replays the interrupted epoch from its start: the batches
trained before the checkpoint are trained twice, and the epochs after it are
no longer the loader's. This one also saves :meth:`RootSequence.state_dict`
(the batches of the epoch trained so far) with the weights, and restores it,
so that the rerun trains on the rest of the interrupted epoch, each event once,
then on whole epochs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

from ._checks import is_int
from ._json import write_json
from .errors import ParameterError
from .sequence import RootSequence

__all__ = ["BackupAndRestore"]

log = logging.getLogger(__name__)

METADATA = "training_metadata.json"
"""The checkpoint's metadata, as Keras names it: ``epoch`` and ``batch`` (Keras'), ``saved_in_epoch``, ``loader``
(the sequence's state) and ``weights`` (the name of the weights file of the checkpoint)."""

_RAN_OUT = "Your input ran out of data"  # Keras' warning as a resumed epoch's shorter pass ends


class BackupAndRestore(keras.callbacks.Callback):  # type: ignore[misc]  # keras ships no type information
    """Back up the weights and the loader's place; restore both when a killed ``fit`` is run again.

    A drop-in for ``keras.callbacks.BackupAndRestore``, with the same
    arguments and the training sequence: every ``save_freq`` batches (or at
    each epoch's end) it writes the weights and, in ``training_metadata.json``,
    Keras' epoch and batch and the sequence's :meth:`~mlaas4hep.RootSequence.state_dict`
    at the batches trained so far (not those Keras has read ahead). The
    metadata is replaced atomically and names the weights file written just
    before it: a kill at any moment leaves a checkpoint whose weights and place
    belong together. When ``fit`` starts (the same script run again), a
    checkpoint found in ``backup_dir`` is restored: the weights, Keras' epoch,
    and the sequence's place.

    **Epoch numbering.** The interrupted epoch keeps its number and is
    shorter: its pass serves only the batches not trained before the
    checkpoint, each once (Keras' progress bar stops short of its count). The
    epochs after it are whole and numbered as before; Keras epoch ``k`` and
    the loader's epoch keep the difference they had. A checkpoint taken after
    an epoch's last batch resumes at the next epoch.

    Parameters
    ----------
    backup_dir : str or path
        Where the checkpoint lives (made if missing); deleted at the end of a
        ``fit`` that completes, with ``delete_checkpoint=True``.
    sequence : RootSequence
        The training sequence given to ``fit``. Its batches must reach the
        model in the order the sequence serves them: Keras' own ``workers > 1``
        or ``use_multiprocessing`` (which fetch out of order) are refused; the
        sequence's worker processes (``workers`` with Keras told 1) are fine.
    save_freq : "epoch" or int
        Save at each epoch's end, or every ``save_freq`` batches.
    double_checkpoint : bool
        Keep the previous checkpoint too, restored if the latest cannot be
        read or its weights cannot be loaded.
    delete_checkpoint : bool
        Delete ``backup_dir`` when ``fit`` completes.

    Raises
    ------
    ParameterError
        A bad argument; ``fit`` with ``steps_per_epoch`` other than the
        sequence's length (passes that are not epochs), or a place that is not
        the first batches of the epoch in order (``fit(shuffle=True)`` over a
        sequence made with ``shuffle=False``).

    Examples
    --------
    >>> import mlaas4hep
    >>> backup = mlaas4hep.BackupAndRestore("backup", sequence=train, save_freq=100)  # doctest: +SKIP
    >>> model.fit(train, epochs=10, callbacks=[backup])  # run again after a kill: resumes  # doctest: +SKIP
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        sequence: RootSequence,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        if not str(backup_dir):
            msg = "backup_dir must name a directory, got an empty path"
            raise ParameterError(msg)
        if not isinstance(sequence, RootSequence):
            msg = f"sequence must be the RootSequence given to fit, got {type(sequence).__name__}"
            raise ParameterError(msg)
        if save_freq != "epoch" and not (is_int(save_freq) and int(save_freq) > 0):
            msg = f"save_freq must be 'epoch' or a positive integer, got {save_freq!r}"
            raise ParameterError(msg)
        if sequence.workers > 1 or sequence.use_multiprocessing:
            msg = (
                f"BackupAndRestore needs the batches in the order the sequence serves them: Keras' workers="
                f"{sequence.workers}, use_multiprocessing={sequence.use_multiprocessing} fetch out of order "
                "(the sequence's own worker processes do not: see RootSequence's workers)"
            )
            raise ParameterError(msg)
        self.backup_dir, self.sequence = Path(backup_dir), sequence
        self.save_freq, self.double_checkpoint, self.delete_checkpoint = save_freq, double_checkpoint, delete_checkpoint
        self._unsaved = 0  # batches trained since the last save
        self._epoch = self._trained = 0  # Keras' epoch, and the batches of it trained
        self._first: tuple[int, int, int] | None = None  # Keras' first epoch of this fit, the loader's, its offset
        self._restored: tuple[int, int] = (0, 0)  # the loader's epoch and position when the fit began
        self._quiet: warnings.catch_warnings[Any] | None = None

    # -- Keras ----------------------------------------------------------------------------------------
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        steps = (self.params or {}).get("steps")
        if steps is not None and steps != len(self.sequence):
            msg = (
                f"BackupAndRestore needs passes that are epochs: fit's steps_per_epoch={steps}, "
                f"but the sequence has {len(self.sequence)} batches"
            )
            raise ParameterError(msg)
        self._restore_latest()
        state = self.sequence.state_dict()
        self._restored = (state["epoch"], state["position"])
        self._first, self._unsaved = None, 0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch, self._trained = int(epoch), 0
        if self._first is None:
            self._first = (self._epoch, *self._restored)
            if self._restored[1]:  # a shorter pass, which Keras reports as running out of data
                self._quiet = warnings.catch_warnings()
                self._quiet.__enter__()
                warnings.filterwarnings("ignore", message=_RAN_OUT, category=UserWarning)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        trained = int(batch) + 1  # Keras' batch ends a step of steps_per_execution batches
        self._unsaved += trained - self._trained
        self._trained = trained
        state = self._place(trained)  # checked at every batch: a place out of order is refused at once
        if self.save_freq != "epoch" and self._unsaved >= int(self.save_freq):
            self._save(trained, state)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._end_quiet()
        if self.save_freq == "epoch":
            self._save(None, self._place(None))

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self._end_quiet()
        if self.delete_checkpoint and self.backup_dir.exists():
            shutil.rmtree(self.backup_dir)

    def _end_quiet(self) -> None:
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None

    # -- the checkpoint ----------------------------------------------------------------------------
    def _place(self, trained: int | None) -> tuple[int, dict[str, Any]]:
        """Keras' epoch to resume at and the loader's state, after ``trained`` batches of this epoch (None: all)."""
        assert self._first is not None
        keras_first, loader_first, offset = self._first
        loader_epoch = loader_first + self._epoch - keras_first
        done = (offset if self._epoch == keras_first else 0) + (trained or 0)
        if trained is None or done >= len(self.sequence):
            return self._epoch + 1, self.sequence.state_dict(epoch=loader_epoch + 1, batches=0)
        return self._epoch, self.sequence.state_dict(epoch=loader_epoch, batches=done)

    def _save(self, trained: int | None, place: tuple[int, dict[str, Any]]) -> None:
        """Write the weights to a new file, then the metadata that names it (atomically), then drop old weights.

        Both files reach the disk (fsync) before the metadata replaces the
        last: a crash of the node, not only of the process, leaves a whole checkpoint.
        """
        keras_epoch, state = place
        self._unsaved = 0
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        weights = f"weights-{uuid.uuid4().hex[:12]}.weights.h5"
        self.model.save_weights(str(self.backup_dir / weights))
        _sync(self.backup_dir / weights)
        path = self.backup_dir / METADATA
        keep = {weights}
        if self.double_checkpoint and path.exists():
            previous = self._read_metadata(METADATA)
            keep.add(str((previous or {}).get("weights")))
            os.replace(path, path.with_name(METADATA + ".bkp"))
        metadata = {
            "epoch": keras_epoch,  # Keras' epoch to resume at
            "batch": trained,  # the batches of the epoch in progress trained (None: all)
            "saved_in_epoch": self._epoch,  # the epoch in progress
            "loader": state,
            "weights": weights,
        }
        _sync(write_json(path.with_name(f".{METADATA}.new"), metadata, "checkpoint metadata"))
        os.replace(path.with_name(f".{METADATA}.new"), path)
        _sync(self.backup_dir)
        for old in self.backup_dir.glob("weights-*.weights.h5"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def _read_metadata(self, name: str) -> dict[str, Any] | None:
        path = self.backup_dir / name
        if not path.exists():
            return None
        try:
            metadata = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            msg = f"{path}: not a checkpoint's metadata ({err})"
            raise ParameterError(msg) from err
        if not isinstance(metadata, dict) or not {"epoch", "loader", "weights"} <= metadata.keys():
            msg = f"{path}: not a checkpoint's metadata of mlaas4hep.BackupAndRestore (epoch, loader, weights)"
            raise ParameterError(msg)
        return metadata

    def _restore_latest(self) -> None:
        """Restore the latest checkpoint, or with ``double_checkpoint`` the previous one if the latest is unreadable."""
        names = [METADATA, METADATA + ".bkp"] if self.double_checkpoint else [METADATA]
        for n, name in enumerate(names):
            try:
                metadata = self._read_metadata(name)
                if metadata is not None:
                    self._restore(metadata)
                    return
            except (OSError, ValueError) as err:  # a ParameterError is a ValueError
                if n == len(names) - 1:
                    raise
                log.warning("%s: %s; restoring the previous checkpoint", self.backup_dir / name, err)

    def _restore(self, metadata: dict[str, Any]) -> None:
        """Load the weights, Keras' epoch and the sequence's place of ``metadata``."""
        if not self.model.built:
            msg = "BackupAndRestore restores into a built model: build it (or call it on a batch) before fit"
            raise ParameterError(msg)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(self.backup_dir / str(metadata["weights"])))
        self.sequence.load_state_dict(metadata["loader"])
        self.model._initial_epoch = int(metadata["epoch"])  # as keras.callbacks.BackupAndRestore does
        log.info(
            "restored %s: Keras epoch %d, the loader's epoch %d after %d batches",
            self.backup_dir,
            metadata["epoch"],
            metadata["loader"]["epoch"],
            metadata["loader"]["position"],
        )


def _sync(path: Path) -> None:
    """Have the file or directory at ``path`` reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
