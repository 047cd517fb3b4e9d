"""Real DDP: ``torchrun --nproc_per_node=2`` trains a DistributedDataParallel model on RootDataset, gloo on CPU.

Each rank takes its rank and world size from the process group, reads through
two DataLoader workers, and writes the event ids it trained on in each epoch;
the test checks that the ranks' union is every event once per epoch and that
the ranks trained on as many batches (DDP's all-reduce hangs otherwise), with
files of uneven sizes. A second run resumes a DDP training stopped mid-epoch from
each rank's StatefulDataLoader state; in one process, ranks of other layouts
serve as many batches each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdata.stateful_dataloader")

RUN_TIMEOUT = 240  # seconds torchrun may take: a rank waiting for a batch that never comes hangs DDP
ID = 1_000_000  # uid = file_id * ID + entry, as in conftest.write_tree
SIZES = (1001, 1702)  # 2703 events: ranks of 1352 and 1351 events

TRAIN = '''
"""torchrun --nproc_per_node=2 train.py CONFIG: a DDP model trained on RootDataset, each rank's event ids saved."""
import json, os, sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchdata.stateful_dataloader import StatefulDataLoader

from mlaas4hep.torch import RootDataset

cfg = json.loads(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
train = RootDataset(cfg["files"], labels=[1, 0], branches=["uid", "MET_pt"], normalization=None,
                    batch_size=64, chunk_size=250, seed=11)
assert (train.rank, train.world_size) == (rank, 2), (train.rank, train.world_size)
uid = train.feature_names.index("uid")
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(train.num_features, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-9)
loader = StatefulDataLoader(train, batch_size=None, num_workers=2, multiprocessing_context="fork",
                            persistent_workers=True)
checkpoint = os.path.join(cfg["out"], f"loader-rank{rank}.json")  # each rank its own loader state
first = 0
if cfg["resume"]:
    with open(checkpoint) as f:
        saved = json.load(f)
    loader.load_state_dict(saved["loader"])
    first = saved["epoch"]
served = {}
for epoch in range(first, 2):
    train.set_epoch(epoch)
    uids, batches = [], 0
    for x, y in loader:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        optimizer.zero_grad()
        loss.backward()  # an all-reduce over the ranks: each must come with as many batches
        optimizer.step()
        uids.extend(x[:, uid].long().tolist())
        batches += 1
        if [epoch, batches] == cfg["stop"]:  # as if killed right after this checkpoint
            with open(checkpoint, "w") as f:
                json.dump({"loader": loader.state_dict(), "epoch": epoch}, f)
            break
    served[epoch] = {"uids": uids, "batches": batches, "len": len(train)}
    if [epoch, batches] == cfg["stop"]:
        break
with open(os.path.join(cfg["out"], f"rank{rank}.json"), "w") as f:
    json.dump(served, f)
dist.destroy_process_group()
'''


@pytest.fixture(scope="module")
def uneven_files(tmp_path_factory, make_tree) -> list[Path]:
    d = tmp_path_factory.mktemp("uneven")
    return [make_tree(d / f"f{i}.root", n, seed=10 + i, file_id=i, basket=400) for i, n in enumerate(SIZES)]


def _torchrun(tmp_path: Path, files: list[Path], out: Path, *, resume: bool = False, stop=None) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    out.mkdir(exist_ok=True)
    cfg = {"files": [str(f) for f in files], "out": str(out), "resume": resume, "stop": stop}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        [*command, str(script), json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # torchrun, its ranks and their DataLoader workers: one group, killed together
    ) as run:
        try:
            stdout, stderr = run.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            stdout, stderr = run.communicate()
            pytest.fail(f"torchrun ran past {RUN_TIMEOUT} s (a rank waiting at an all-reduce?): {stderr[-6000:]}")
    assert run.returncode == 0, stdout[-3000:] + stderr[-6000:]


def _everything() -> list[int]:
    return sorted(u for i, n in enumerate(SIZES) for u in range(i * ID, i * ID + n))


def _ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_torchrun_trains_a_ddp_model_on_every_event_once_per_epoch(uneven_files, tmp_path):
    _torchrun(tmp_path, uneven_files, tmp_path / "out")
    ranks = _ranks(tmp_path / "out")
    orders = []
    for epoch in ("0", "1"):
        batches = [rank[epoch]["batches"] for rank in ranks]
        assert batches[0] == batches[1] == ranks[0][epoch]["len"] == 22  # ceil(1352 / 64), in both ranks
        assert [len(rank[epoch]["uids"]) for rank in ranks] == [1352, 1351]
        union = ranks[0][epoch]["uids"] + ranks[1][epoch]["uids"]
        assert sorted(union) == _everything()  # each event once over the ranks
        orders.append(union)
    assert orders[0] != orders[1]  # set_epoch: each epoch shuffled anew


@pytest.mark.slow
def test_torchrun_resumes_each_ranks_loader_state(uneven_files, tmp_path):
    """Every rank stops after 15 batches of epoch 1 with its loader's state; a new torchrun resumes there."""
    _torchrun(tmp_path, uneven_files, tmp_path / "out", stop=[1, 15])
    before = _ranks(tmp_path / "out")
    assert [rank["1"]["batches"] for rank in before] == [15, 15] and list(before[0]) == ["0", "1"]
    _torchrun(tmp_path, uneven_files, tmp_path / "out", resume=True)
    after = _ranks(tmp_path / "out")
    assert list(after[0]) == ["1"]  # the rest of epoch 1 only
    assert [rank["1"]["batches"] for rank in after] == [22 - 15] * 2
    union = [u for part in (before, after) for rank in part for u in rank["1"]["uids"]]
    assert sorted(union) == _everything()


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 100), (3, 64), (5, 50)])
def test_every_rank_serves_as_many_batches_with_uneven_files(uneven_files, world_size, batch_size):
    """What keeps DDP's all-reduces in step, for the uneven files of the torchrun test and other layouts."""
    from mlaas4hep.torch import RootDataset

    kw = {"labels": [1, 0], "branches": ["uid"], "normalization": None, "chunk_size": 250, "seed": 11}
    ranks = [
        RootDataset(uneven_files, rank=r, world_size=world_size, batch_size=batch_size, **kw) for r in range(world_size)
    ]
    served = []
    for ds in ranks:
        ds.set_epoch(1)
        batches = [x[:, 0].numpy().astype(int).tolist() for x, _ in ds]
        ds.close()
        assert len(batches) == len(ds) == len(ranks[0])  # as many in every rank
        served.extend(u for batch in batches for u in batch)
    assert sorted(served) == _everything()  # each event once over the ranks
