"""Train the recipe's model on demo files through RootSequence, as a user would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from mlaas4hep import RootSequence  # noqa: E402
from mlaas4hep.workflow.demo import make_demo_files  # noqa: E402
from mlaas4hep.workflow.models import seed_model  # noqa: E402


@pytest.mark.slow
def test_training_on_demo_files_learns(tmp_path: Path) -> None:
    files = make_demo_files(tmp_path, n_events=6000, seed=3)
    kw = {"labels": [1, 0], "batch_size": 100, "chunk_size": 2000, "validation_split": 0.25, "seed": 1}
    train = RootSequence(files, subset="training", **kw)
    val = RootSequence(files, subset="validation", specs=train.specs, **kw)
    # the demo schema: 18 flat + 48 jagged branches, run/event/luminosityBlock excluded
    assert len(train.specs.flat) == 15 and len(train.specs.jagged) == 48
    assert train.num_features > 1000
    keras.utils.set_random_seed(1)
    model = seed_model(train.num_features)
    history = model.fit(train, validation_data=val, epochs=3, verbose=0)
    assert history.history["val_auc"][-1] > 0.7
    # every training event was served once per epoch
    assert train.epoch == 3
    assert train.chunk_reads <= 3 * len(train.reader) + train.prefetch
    x, y = val[0]
    assert not np.isnan(x).any() and len(y) == len(x) == 100
