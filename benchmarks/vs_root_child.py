"""Run in a fresh process by ``vs_root.py`` (target 7): one contender, two epochs; print its measures as JSON.

``run ours --plan P`` runs RootSequence (in the main venv), ``run root --plan P``
ROOT's ``ROOT.Experimental.ML.RDataLoader`` (in ``.venv-root``). Both read the
file, columns and padding lengths of the plan (a JSON file written by the
driver). ``rewrite SRC DST`` copies a tree with ROOT, in clusters of
``--cluster`` entries. This module imports only the standard library at the
top, so that it runs in either venv.

Measures, in the child's own process:

- ``import_rss``: VmRSS after the imports (TensorFlow's share for RootSequence,
  which imports keras; ROOT's libraries for ROOT), and ``import_s`` their time;
- ``first_batch_s``: from the start of construction to the first batch in hand;
- ``epoch1_s``, ``epoch2_s``: wall time of every batch of epoch 1 and 2 (the
  steady one), each batch touched; ``events``: events served in epoch 2;
- ``peak_rss``: VmHWM at the end.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
if TYPE_CHECKING:  # checked as part of the benchmarks package; run as a script from either venv
    from benchmarks.memory_child import status
else:
    from memory_child import status


def consume(batches: Iterable[Any]) -> tuple[int, int, float]:
    """Touch every batch ``x`` (or ``(x, y)``): its rows, its width and a checksum of a first-column element."""
    n, width, touch = 0, 0, 0.0
    for batch in batches:
        x = batch[0] if isinstance(batch, tuple) else batch
        n += x.shape[0]
        width = x.shape[1]
        touch += float(x[-1, 0])
    return n, width, touch


def run_epochs(first: Callable[[], Iterator[Any]], epoch: Callable[[], Iterator[Any]], t0: float) -> dict[str, Any]:
    """Time the first batch (from ``t0``), the rest of epoch 1, then the whole of epoch 2."""
    it = first()
    batch = next(it)
    first_batch_s = time.perf_counter() - t0
    n1, _, _ = consume([batch])
    m, _, _ = consume(it)
    epoch1_s = time.perf_counter() - t0
    t = time.perf_counter()
    n2, width, touch = consume(epoch())
    epoch2_s = time.perf_counter() - t
    return {
        "first_batch_s": first_batch_s,
        "epoch1_s": epoch1_s,
        "epoch1_events": n1 + m,
        "epoch2_s": epoch2_s,
        "events": n2,
        "features": width,
        "touch": touch,
    }


def sequence_epoch(seq: Any) -> Iterator[Any]:
    """One epoch of a RootSequence as Keras walks it: ``on_epoch_begin``, every ``seq[i]``, ``on_epoch_end``."""
    seq.on_epoch_begin()
    for i in range(len(seq)):
        yield seq[i]
    seq.on_epoch_end()


def run_ours(plan: dict[str, Any]) -> dict[str, Any]:
    """RootSequence with its defaults (min-max normalization, shuffle) and the plan's sizes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t = time.perf_counter()
    import keras  # noqa: F401  - TensorFlow's share, as in memory_child.py

    from mlaas4hep import RootSequence

    import_s = time.perf_counter() - t
    import_rss = status("VmRSS")
    t0 = time.perf_counter()
    seq = RootSequence(
        [plan["file"]],
        labels=[1.0],
        tree=plan["tree"],
        specs=plan["specs"],
        batch_size=plan["batch_size"],
        chunk_size=plan["chunk_size"],
        seed=plan["seed"],
    )
    out = run_epochs(lambda: sequence_epoch(seq), lambda: sequence_epoch(seq), t0)
    seq.close()
    return {**out, "import_s": import_s, "import_rss": import_rss, "peak_rss": status("VmHWM")}


def run_root(plan: dict[str, Any]) -> dict[str, Any]:
    """ROOT's RDataLoader on an RDataFrame of the plan's file: same columns, padding lengths and batch size."""
    warnings.filterwarnings("ignore", message=r"(?s).*alpha stage")
    t = time.perf_counter()
    ROOT: Any = importlib.import_module("ROOT")  # ROOT ships no type information

    # ROOT imports lazily: load the libraries and the loader's Python layer before the clock starts
    loader_cls = ROOT.Experimental.ML.RDataLoader
    rdataframe = ROOT.RDataFrame
    import_s = time.perf_counter() - t
    import_rss = status("VmRSS")
    t0 = time.perf_counter()
    df = rdataframe(plan["tree"], plan["file"])
    loader = loader_cls(
        df,
        batch_size=plan["batch_size"],
        batches_in_memory=plan["chunk_size"] // plan["batch_size"],
        columns=plan["columns"],
        max_vec_sizes=plan["max_vec_sizes"],
        vec_padding=0.0,
        shuffle=True,
        drop_remainder=False,
        set_seed=plan["seed"],
    )
    batches = loader.as_numpy()
    out = run_epochs(lambda: iter(batches), lambda: iter(batches), t0)
    return {
        **out,
        "import_s": import_s,
        "import_rss": import_rss,
        "peak_rss": status("VmHWM"),
        "version": str(ROOT.gROOT.GetVersion()),
        "implicit_mt": bool(ROOT.IsImplicitMTEnabled()),
    }


def rewrite(source: str, dest: str, tree: str, cluster: int) -> dict[str, Any]:
    """Copy ``tree`` of ``source`` with ROOT's Snapshot, flushing a cluster every ``cluster`` entries (zlib level 1)."""
    warnings.filterwarnings("ignore", message=r"(?s).*alpha stage")
    ROOT: Any = importlib.import_module("ROOT")  # ROOT ships no type information

    options = ROOT.RDF.RSnapshotOptions()
    options.fAutoFlush = cluster
    options.fCompressionAlgorithm = ROOT.RCompressionSetting.EAlgorithm.kZLIB
    options.fCompressionLevel = 1
    t = time.perf_counter()
    ROOT.RDataFrame(tree, source).Snapshot(tree, dest, "", options)
    return {"rewrite_s": time.perf_counter() - t, "cluster": cluster}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one contender, two epochs")
    run.add_argument("contender", choices=["ours", "root"])
    run.add_argument("--plan", type=Path, required=True, help="JSON: file, tree, columns, max_vec_sizes, sizes")
    copy = sub.add_parser("rewrite", help="copy a tree with ROOT, in clusters of --cluster entries")
    copy.add_argument("source")
    copy.add_argument("dest")
    copy.add_argument("--tree", required=True)
    copy.add_argument("--cluster", type=int, required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.command == "rewrite":
        result = rewrite(args.source, args.dest, args.tree, args.cluster)
    else:
        plan = json.loads(args.plan.read_text())
        result = {"contender": args.contender, **(run_ours(plan) if args.contender == "ours" else run_root(plan))}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
