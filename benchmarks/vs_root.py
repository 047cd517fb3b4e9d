"""Target 7: RootSequence against ROOT's own loader, ``ROOT.Experimental.ML.RDataLoader`` (``make bench-root``).

Usage::

    python benchmarks/vs_root.py --root-python .venv-root/bin/python           # 3 repeats, 100,000 events
    python benchmarks/vs_root.py --root-python .venv-root/bin/python --quick   # a smoke run

Both contenders read one demo file of the harness (the first of ``Config.files``),
the same columns (the branches of its specs), the same padding lengths (each
jagged branch to its maximum length: ROOT's ``max_vec_sizes``), batches of 100,
buffers of one chunk (``chunk_size`` events: ROOT's ``batches_in_memory =
chunk_size / batch_size``), shuffling on, one seed. RootSequence normalizes
(min-max, its default); ROOT's loader serves the raw values.

Each contender runs in a fresh process (``vs_root_child.py``; RootSequence with
this venv's Python, ROOT with ``--root-python``), one after the other and in
alternating order, ``repeat`` times; the median of the per-repeat ratios is
reported, as in ``run.py``.

ROOT's loader reads whole TTree clusters. The demo files, written by uproot,
have no cluster boundaries that ROOT sees (one cluster of the whole tree), so on
them ROOT's loader reads the whole file before its first batch. The benchmark
therefore runs on two versions of the same events: a copy rewritten by ROOT
with a cluster every ``chunk_size`` entries (the fair comparison: targets 7a-7c)
and the demo file as written by uproot (7a-u to 7c-u).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DATA_DIR, TREE, Config, Result, format_result, median, print_table, ratios

__all__ = ["Variant", "bench_vs_root", "main"]

log = logging.getLogger("benchmarks")

ROOT_DIR = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "vs_root_child.py"
ROOT_PYTHON = ROOT_DIR / ".venv-root" / "bin" / "python"
MIB = 1024**2


@dataclass
class Variant:
    """One version of the benchmark file: its path, where its specs go, and the suffix of its result keys."""

    name: str
    file: Path
    specs_path: Path
    suffix: str
    note: str


def child(python: Path, *args: str) -> dict[str, Any]:
    """Run ``vs_root_child.py`` with ``python``; the JSON it prints last."""
    cmd = [str(python), str(CHILD), *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        msg = f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        raise RuntimeError(msg)
    measures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measures


def rewrite_with_root(root_python: Path, source: Path, dest: Path, cluster: int) -> None:
    """Copy ``source`` with ROOT in clusters of ``cluster`` entries, once (kept while newer than the source)."""
    if dest.exists() and dest.stat().st_mtime >= source.stat().st_mtime:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.stem + ".partial.root")
    out = child(root_python, "rewrite", str(source), str(partial), "--tree", TREE, "--cluster", str(cluster))
    partial.replace(dest)
    log.info("rewrote %s with ROOT in %.1f s (clusters of %d entries)", dest, out["rewrite_s"], cluster)


def variants(cfg: Config, root_python: Path, which: str) -> list[Variant]:
    """The ROOT-written copy of the first demo file and/or the demo file itself."""
    source = cfg.files[0]
    work = source.parent / "vs_root"
    out = []
    if which in ("root", "both"):
        copy = work / source.name
        rewrite_with_root(root_python, source, copy, cfg.chunk_size)
        note = f"ROOT-written copy, clusters of {cfg.chunk_size}"
        out.append(Variant("root-written", copy, work / "specs_root_written.json", "", note))
    if which in ("uproot", "both"):
        note = "uproot-written demo file, one ROOT cluster"
        out.append(Variant("uproot-written", source, work / "specs_uproot_written.json", "-u", note))
    return out


def plan(cfg: Config, variant: Variant) -> dict[str, Any]:
    """What both children read: file, tree, columns, padding lengths, sizes, seed (specs built once and cached)."""
    from mlaas4hep import SpecBuilder

    variant.specs_path.parent.mkdir(parents=True, exist_ok=True)
    specs = SpecBuilder([str(variant.file)], tree=TREE).build(cache=variant.specs_path)
    return {
        "file": str(variant.file),
        "tree": TREE,
        "columns": specs.names,
        "max_vec_sizes": {name: specs[name].max_length for name in specs.jagged},
        "specs": str(variant.specs_path),
        "batch_size": cfg.batch_size,
        "chunk_size": cfg.chunk_size,
        "seed": 1,
        "n_events": specs.n_events,
        "num_features": specs.num_features,
    }


def measure_children(repeat: int, plan_path: Path, pythons: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """Each contender ``repeat`` times in a fresh process, alternating their order from one repeat to the next."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in pythons}
    names = list(pythons)
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            out = child(pythons[name], "run", name, "--plan", str(plan_path))
            runs[name].append(out)
            log.info(
                "repeat %d: %-4s first batch %.2f s, epoch 2 %.2f s (%.0f kev/s), peak %.0f MiB, imports %.0f MiB",
                r + 1,
                name,
                out["first_batch_s"],
                out["epoch2_s"],
                out["events"] / out["epoch2_s"] / 1e3,
                out["peak_rss"] / MIB,
                out["import_rss"] / MIB,
            )
    return runs


def check(p: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> None:
    """Both served every event of the file in epoch 2, in rows of the same width."""
    for name, outs in runs.items():
        for out in outs:
            if out["events"] != p["n_events"] or out["features"] != p["num_features"]:
                msg = (
                    f"{name} served {out['events']} events x {out['features']} features, "
                    f"expected {p['n_events']} x {p['num_features']}"
                )
                raise RuntimeError(msg)


def _rate(out: dict[str, Any]) -> float:
    """Events per second of the steady epoch (epoch 2)."""
    return float(out["events"] / out["epoch2_s"])


def _own(out: dict[str, Any]) -> float:
    """Peak RSS above the RSS after the imports (TensorFlow's or ROOT's share)."""
    return float(out["peak_rss"] - out["import_rss"])


def _med(outs: list[dict[str, Any]], key: str) -> float:
    return median([o[key] for o in outs])


def results(variant: Variant, p: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> list[Result]:
    """7a: epoch-2 throughput ratio; 7b: peak RSS above the imports, ratio; 7c: time to the first batch, ratio."""
    ours, root = runs["ours"], runs["root"]
    r_rate = ratios([_rate(o) for o in ours], [_rate(o) for o in root])
    r_mem = ratios([_own(o) for o in ours], [_own(o) for o in root])
    r_first = ratios([o["first_batch_s"] for o in ours], [o["first_batch_s"] for o in root])
    where = f"{Path(p['file']).name} ({variant.note}), {p['n_events']} events x {p['num_features']} features"
    memory = (
        f"above imports ours {median([_own(o) for o in ours]) / MIB:.0f} MiB, "
        f"ROOT {median([_own(o) for o in root]) / MIB:.0f} MiB; whole peak ours {_med(ours, 'peak_rss') / MIB:.0f} "
        f"MiB (imports incl. TensorFlow {_med(ours, 'import_rss') / MIB:.0f}), "
        f"ROOT {_med(root, 'peak_rss') / MIB:.0f} MiB (imports {_med(root, 'import_rss') / MIB:.0f})"
    )
    first = (
        f"ours {_med(ours, 'first_batch_s'):.2f} s, ROOT {_med(root, 'first_batch_s'):.2f} s from construction "
        f"(specs cached; imports before: ours {_med(ours, 'import_s'):.1f} s, ROOT {_med(root, 'import_s'):.1f} s)"
    )
    speed = (
        f"ours {median([_rate(o) for o in ours]) / 1e3:.0f} kev/s (min-max normalized), "
        f"ROOT {median([_rate(o) for o in root]) / 1e3:.0f} kev/s (raw values); {where}"
    )
    s, tag = variant.suffix, f" [{variant.name}]"
    return [
        Result(f"7a{s}", "vs ROOT: epoch-2 events/s, ours / ROOT" + tag, median(r_rate), ">=", 2, r_rate, speed),
        Result(f"7b{s}", "vs ROOT: peak RSS above imports, ours / ROOT" + tag, median(r_mem), "<", 1, r_mem, memory),
        Result(f"7c{s}", "vs ROOT: time to first batch, ours / ROOT" + tag, median(r_first), "<", 1, r_first, first),
    ]


def describe_runs(name: str, runs: dict[str, list[dict[str, Any]]]) -> str:
    """ROOT's version and threading, and the per-repeat absolute numbers behind the ratios."""
    root = runs["root"][0]
    lines = [f"{name}: ROOT {root['version']}, implicit MT {root['implicit_mt']}; per repeat:"]
    for who, outs in runs.items():
        lines.append(
            f"  {who:<4} epoch-2 kev/s {[round(_rate(o) / 1e3) for o in outs]}, "
            f"first batch s {[round(o['first_batch_s'], 2) for o in outs]}, "
            f"peak MiB {[round(o['peak_rss'] / MIB) for o in outs]}, "
            f"above imports MiB {[round(_own(o) / MIB) for o in outs]}"
        )
    return "\n".join(lines)


def bench_vs_root(cfg: Config, root_python: Path, which: str = "both") -> list[Result]:
    """Target 7 on each file variant: both contenders side by side, ``cfg.repeat`` times."""
    pythons = {"ours": Path(sys.executable), "root": root_python}
    out: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="vs_root_") as tmp:
        for variant in variants(cfg, root_python, which):
            p = plan(cfg, variant)
            plan_path = Path(tmp) / f"plan_{variant.name}.json"
            plan_path.write_text(json.dumps(p))
            runs = measure_children(cfg.repeat, plan_path, pythons)
            check(p, runs)
            print(describe_runs(variant.name, runs), flush=True)
            for result in results(variant, p, runs):
                print(format_result(result), flush=True)
                out.append(result)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="target 7: RootSequence against ROOT's RDataLoader")
    parser.add_argument("--root-python", type=Path, default=ROOT_PYTHON, help=f"Python with ROOT ({ROOT_PYTHON})")
    parser.add_argument("--quick", action="store_true", help="small data and one repeat: checks that the harness runs")
    parser.add_argument("--repeat", type=int, help="repeats (default 3, 1 with --quick)")
    parser.add_argument(
        "--file",
        choices=["both", "root", "uproot"],
        default="both",
        help="the ROOT-written copy (clusters of chunk_size), the uproot-written demo file, or both (default)",
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"where the demo files are cached ({DATA_DIR})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.root_python.exists():
        print(f"no Python with ROOT at {args.root_python}: run 'make bench-root'", file=sys.stderr)
        return 2
    cfg = Config.quick_config(args.data_dir) if args.quick else Config(data_dir=args.data_dir)
    if args.repeat:
        cfg.repeat = args.repeat
    from benchmarks.run import describe_machine

    t0 = time.perf_counter()
    print(f"machine: {describe_machine()}")
    print(
        f"file: {cfg.files[0].name} ({TREE}), batch {cfg.batch_size}, chunk {cfg.chunk_size} "
        f"(ROOT: batches_in_memory {cfg.chunk_size // cfg.batch_size}), shuffle on, {cfg.repeat} repeats, "
        "median of per-repeat ratios"
    )
    print("RootSequence normalizes (min-max, its default); ROOT's RDataLoader does not normalize.\n")
    found = bench_vs_root(cfg, args.root_python, args.file)
    print_table(found)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
