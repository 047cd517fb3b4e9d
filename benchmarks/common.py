"""What every benchmark shares: the configuration, the demo data, timing helpers and the results table.

Every result is a ratio of contenders timed side by side in one process run
(the machine is shared and noisy), repeated; the median of the per-repeat
ratios is reported next to its target.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import operator
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_DIR",
    "Config",
    "Result",
    "format_result",
    "measure",
    "print_table",
    "raw_read",
    "timed",
    "zlib_as",
]

log = logging.getLogger("benchmarks")

DATA_DIR = Path(__file__).resolve().parent / "data"
"""Default cache of the demo files (ignored by git, see benchmarks/.gitignore)."""

TREE = "Events"
LABELS = (1.0, 0.0)


@dataclass
class Config:
    """Sizes of one benchmark run.

    The full run uses demo files of ``n_events + 1.03 * n_events`` events
    (203,000 by default), chunks of 10,000 and batches of 100, as the
    original MLaaS4HEP; ``quick()`` shrinks everything for a smoke test.
    """

    data_dir: Path = DATA_DIR
    n_events: int = 100_000
    chunk_size: int = 10_000
    batch_size: int = 100
    repeat: int = 3
    # target 2: the per-event reference runs on this many events and is scaled to a chunk
    original_events: int = 1_000
    # target 3: events of the training epoch (-1: all)
    train_events: int = -1
    quick: bool = False
    _specs: Any = field(default=None, repr=False)

    @classmethod
    def quick_config(cls, data_dir: Path, repeat: int = 1) -> Config:
        return cls(
            data_dir=data_dir,
            n_events=4_000,
            chunk_size=1_000,
            batch_size=100,
            repeat=repeat,
            original_events=200,
            train_events=-1,
            quick=True,
        )

    @property
    def files(self) -> list[Path]:
        """The two demo files, written once and reused while their size matches."""
        from mlaas4hep.workflow.demo import make_demo_files

        directory = self.data_dir / f"demo_{self.n_events}"
        paths = make_demo_files(directory, n_events=self.n_events, overwrite=False)
        return paths

    @property
    def specs_path(self) -> Path:
        return self.data_dir / f"demo_{self.n_events}" / "specs.json"

    @property
    def specs(self) -> Any:
        """Specs of the demo files, built once per run (and saved for the subprocesses)."""
        if self._specs is None:
            from mlaas4hep import SpecBuilder

            self._specs = SpecBuilder([str(p) for p in self.files]).build()
            self._specs.save(self.specs_path)
        return self._specs

    def sequence(self, **kwargs: Any) -> Any:
        """A RootSequence over the demo files with this run's sizes (and the specs built once)."""
        from mlaas4hep import RootSequence

        options: dict[str, Any] = {
            "labels": list(LABELS),
            "specs": self.specs,
            "batch_size": self.batch_size,
            "chunk_size": self.chunk_size,
            "seed": 1,
        }
        options.update(kwargs)
        return RootSequence([str(p) for p in self.files], **options)


@dataclass
class Result:
    """One target's outcome: the median ratio over the repeats and what it should be.

    ``op`` compares ``value`` with ``goal`` (``">="``, ``"<="``, ``">"``, ``"<"``);
    ``detail`` says what was compared, in absolute numbers, for the record.
    """

    key: str
    title: str
    value: float
    op: str
    goal: float
    samples: list[float]
    detail: str = ""
    unit: str = "x"
    info: bool = False  # reported for the record, not a target

    @property
    def met(self) -> bool:
        ops: dict[str, Callable[[float, float], bool]] = {
            ">=": operator.ge,
            "<=": operator.le,
            ">": operator.gt,
            "<": operator.lt,
        }
        return ops[self.op](self.value, self.goal)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of ``fn()`` in seconds (after a garbage collection), and what it returned."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(
    repeat: int,
    contenders: dict[str, Callable[[], Any]],
) -> dict[str, list[float]]:
    """Time each contender ``repeat`` times, alternating their order from one repeat to the next.

    Returns the list of wall times of each contender, repeat by repeat, so that
    ratios can be taken within a repeat (same machine load) before the median.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            dt, _ = timed(contenders[name])
            times[name].append(dt)
            log.info("repeat %d: %s %.3f s", r + 1, name, dt)
    return times


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-repeat ratios ``numerator[r] / denominator[r]``."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@contextlib.contextmanager
def zlib_as(library: str) -> Iterator[None]:
    """Have uproot inflate ZLIB baskets with ``library`` inside the block, then go back to the library before.

    The baselines (a raw uproot loop, the original's reads) use ``"zlib"``, uproot's
    default, as a hand-written loop does; mlaas4hep uses ISA-L where it is installed.
    """
    from mlaas4hep import use_zlib
    from mlaas4hep.inputs.formats.decompression import default_zlib

    before = default_zlib()  # mlaas4hep's own choice, made first, is what comes back after the block
    use_zlib(library)
    try:
        yield
    finally:
        use_zlib(before)


def raw_read(files: Sequence[Path], branches: Sequence[str], step_size: int | str) -> int:
    """Read ``branches`` of every file with a plain ``TTree.iterate`` (library "ak", uproot's default zlib)."""
    import uproot

    n = 0
    with zlib_as("zlib"):
        for path in files:
            with uproot.open(path) as f:
                for arrays in f[TREE].iterate(filter_name=list(branches), step_size=step_size, library="ak"):
                    n += len(arrays)
    return n


def format_result(r: Result) -> str:
    """One line per target: ``[1] title  ratio 0.62x  target >= 0.80x  NOT MET  (detail)``."""
    samples = " ".join(f"{s:.3g}" for s in r.samples)
    spread = f"median of [{samples}]; " if r.samples else ""  # a line derived from other lines has none
    verdict = "info" if r.info else "MET" if r.met else "NOT MET"
    goal = "" if r.info else f"target {r.op} {r.goal:g}{r.unit}"
    return f"[{r.key}] {r.title:<44} {r.value:9.3g}{r.unit:<2} {goal:<16} {verdict:<8}  {spread}{r.detail}"


def print_table(results: Sequence[Result]) -> None:
    """The summary table, in Markdown so that it can be pasted into docs/pages/performance.md."""
    print()
    print("| target | measured | goal | met | detail |")
    print("|---|---|---|---|---|")
    for r in results:
        verdict = "info" if r.info else "yes" if r.met else "**no**"
        goal = "" if r.info else f"{r.op} {r.goal:g}{r.unit}"
        print(f"| {r.key}. {r.title} | {r.value:.3g}{r.unit} | {goal} | {verdict} | {r.detail} |")
    targets = [r for r in results if not r.info]
    print(f"\n{sum(r.met for r in targets)} of {len(targets)} targets met")
