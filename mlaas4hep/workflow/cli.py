"""Command-line interface: ``mlaas4hep demo|specs|predict|workflow`` and the original ``workflow`` command.

This module only parses arguments, sets up logging and prints; the work is done
by :mod:`mlaas4hep.workflow.run`, :mod:`mlaas4hep.specs.values`, :mod:`mlaas4hep.scores` and
:mod:`mlaas4hep.workflow.demo`, with the inputs read by :mod:`mlaas4hep.workflow.lists` and
:mod:`mlaas4hep.workflow.params`. The commands that train or score import Keras
through :func:`mlaas4hep.workflow.quiet.import_keras` (TensorFlow's start-up
lines hidden) for their own run; ``mlaas4hep specs`` never imports Keras or TensorFlow.

What ``-v`` shows: 0 warnings only; 1 the workflow's progress (``mlaas4hep.workflow``'s
log) and every warning, and for the ``workflow`` command each chunk read, as the
original listed them; 2 every log record of mlaas4hep, debug included.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MLaaS4HEPError

if TYPE_CHECKING:
    from .run import WorkflowResult

__all__ = ["build_parser", "main", "run_demo", "workflow_main"]

_HANDLER_MARK = "_mlaas4hep_cli"
_CHUNK_READS = "mlaas4hep.stream.reader"  # the logger of each chunk read (at DEBUG)


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only from Python 3.11 on
    """Writes to whatever ``sys.stdout`` is when a record is emitted (it may be replaced, e.g. by pytest)."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Progress(logging.Filter):
    """What ``-v 1`` shows: the workflow's own progress, every warning, and (``chunk_reads``) each chunk read."""

    def __init__(self, chunk_reads: bool) -> None:
        super().__init__()
        self.chunk_reads = chunk_reads

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.name == _CHUNK_READS:
            return self.chunk_reads
        return record.levelno >= logging.INFO and record.name.startswith("mlaas4hep.workflow")


def _setup_logging(verbose: int, *, chunk_reads: bool = False) -> None:
    """Send mlaas4hep's log records to stdout: 0 warnings only, 1 the workflow's progress, 2 debug.

    ``chunk_reads``: at 1, also each chunk read (logged at DEBUG), as the original workflow listed them.
    """
    if verbose <= 0:
        level = logging.WARNING
    else:
        level = logging.DEBUG if verbose >= 2 or chunk_reads else logging.INFO
    logger = logging.getLogger("mlaas4hep")
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            logger.removeHandler(handler)
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    if verbose == 1:
        handler.addFilter(_Progress(chunk_reads))
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    if verbose <= 0:  # no Keras/TensorFlow chatter at level 0
        for module in ("keras", "tensorflow", "absl"):
            warnings.filterwarnings("ignore", module=module)


# -- demo -----------------------------------------------------------------------------------------


def run_demo(
    directory: Path,
    n_events: int,
    epochs: int,
    seed: int,
    chunk_size: int,
    batch_size: int,
    hist: str = "",
    verbose: int = 1,
) -> WorkflowResult:
    """Write the demo files (kept if there), say what they are, train the recipe's model on them and save it.

    The model, its preprocessing and the run's params go to ``directory / "model.keras"``,
    ``model.preprocessing.json`` and ``model.params.json``.

    Returns
    -------
    WorkflowResult
        The run's result (:func:`mlaas4hep.workflow.run.run_workflow`).
    """
    from .demo import DEMO_SAMPLES, make_demo_files
    from .models import seed_model
    from .params import WorkflowParams
    from .quiet import import_keras
    from .run import run_workflow

    kept = all((directory / s.file_name).is_file() for s in DEMO_SAMPLES)
    files = make_demo_files(directory, n_events=n_events, seed=seed, overwrite=False)
    _print_samples(files, kept)
    import_keras(verbose)
    params = WorkflowParams(
        epochs=epochs, seed=seed, chunk_size=chunk_size, batch_size=batch_size, hist=hist, verbose=verbose
    )
    labels = [s.label for s in DEMO_SAMPLES]
    return run_workflow(
        files, labels, seed_model, params, specs=directory / "specs.json", fout=directory / "model.keras"
    )


def _print_samples(files: Sequence[Path], kept: bool) -> None:
    """What the demo files are: synthetic, their schema, which one is the signal."""
    import uproot

    from .demo import DEMO_SAMPLES

    print("mlaas4hep demo: the original MLaaS4HEP recipe's model trained on two demo ROOT files.")
    print("The files are synthetic: random events that follow the reduced-NanoAOD schema of the recipe's")
    print("CMS Open Data samples, whose names they carry (tree Events, 66 branches: muons, electrons, taus,")
    when = "kept from an earlier run" if kept else "written now"
    print(f"jets, MET, triggers); they are not CMS data. Labelled as the recipe's labels.txt ({when}):")
    width = max(len(str(f)) for f in files)
    for path, sample in zip(files, DEMO_SAMPLES, strict=True):
        with uproot.open(path) as f:
            n = f["Events"].num_entries
        print(f"  {sample.role:<10} (label {sample.label}) {path!s:<{width}} {n:>7} events, {sample.process}")


def _demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_SAMPLES

    directory = Path(args.directory)
    result = run_demo(
        directory,
        args.events,
        args.epochs,
        args.seed,
        args.chunk_size,
        args.batch_size,
        hist=args.hist,
        verbose=args.verbose,
    )
    if args.verbose <= 0:  # at level 0 the log says nothing: still tell the result
        print("test set: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    command = ["mlaas4hep", "predict", *(str(directory / s.file_name) for s in DEMO_SAMPLES)]
    command += ["--model", str(result.model_path), "--preprocessing", str(result.preprocessing_path)]
    command += ["--output-dir", str(directory / "scores"), "--overwrite"]
    print(f"Score the files with the trained model (a friend tree of scores per file, in {directory / 'scores'}):")
    print("  " + shlex.join(command))
    return 0


# -- specs ----------------------------------------------------------------------------------------


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.6g}"


def format_specs_table(specs: Any) -> str:
    """The ``mlaas4hep specs`` table: one row per branch, flat then jagged."""
    header = ("branch", "kind", "dtype", "min", "max", "mean", "std", "max_len", "len_99.9%", "nonfinite")
    rows = []
    for name in specs.names:
        b = specs[name]
        rows.append(
            (
                name,
                b.kind,
                b.dtype,
                _number(b.min),
                _number(b.max),
                _number(b.mean_value) if b.count else "-",
                _number(b.std) if b.count else "-",
                str(b.max_length) if b.is_jagged else "",
                str(b.length_quantile(0.999)) if b.is_jagged else "",
                str(b.nonfinite),
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2])]
        cells += [c.rjust(w) for c, w in zip(row[3:], widths[3:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _specs(args: argparse.Namespace) -> int:
    from ..specs.first_pass import SpecBuilder
    from .lists import read_list

    files = [f for value in args.files for f in read_list(value, "FILE")]
    branches = read_list(args.branches, "--branches") if args.branches else None
    exclude = [v.strip() for v in args.exclude.split(",") if v.strip()]
    specs = SpecBuilder(files, tree=args.tree, branches=branches, exclude=exclude, redirector=args.redirector).build()
    n = len(specs.files)
    print(f"{n} file{'' if n == 1 else 's'}: {specs.summary()}")
    print(format_specs_table(specs))
    if specs.skipped:
        print("skipped: " + ", ".join(f"{n} ({k})" for n, k in sorted(specs.skipped.items())))
    if args.output:
        specs.save(args.output)
        print(f"wrote {args.output}")
    return 0


# -- predict --------------------------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> int:
    from ..scores import write_scores
    from .lists import read_list
    from .quiet import import_keras

    files = [f for value in args.files for f in read_list(value, "FILE")]
    import_keras(args.verbose)
    one = len(args.model) == 1 and len(args.preprocessing) == 1  # one model; several: the models of k folds
    written = write_scores(
        args.model[0] if one else args.model,
        files,
        preprocessing=args.preprocessing[0] if one else args.preprocessing,
        output_dir=args.output_dir,
        name=args.name,
        tree=args.tree,
        cut=args.cut,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        rntuple=args.rntuple,
    )
    for path in dict.fromkeys(written):  # the trees of one file share its output: named once
        print(f"wrote {path}")
    return 0


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="ROOT files (file.root or file.root:tree), or list files"
    )
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        help="the trained model (.keras); once per fold for the k models of a k-fold training",
    )
    parser.add_argument(
        "--preprocessing",
        required=True,
        action="append",
        help="its preprocessing (model.preprocessing.json); once per --model, in the same order",
    )
    parser.add_argument("--output-dir", required=True, help="where to write one friend file per input file")
    parser.add_argument("--name", default="score", help="the scores' branch, and the files' suffix (default score)")
    parser.add_argument("--cut", default=None, help="entries where this is false get NaN (default: score every entry)")
    parser.add_argument("--tree", default=None, help="tree of files that do not name one (default: the one trained on)")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per prediction (default 1000)")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="events per chunk read (default 10000)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--rntuple", action="store_true", help="write RNTuples instead of TTrees")


# -- export ---------------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    from ..deploy import export
    from .quiet import import_keras

    import_keras(args.verbose)
    name = args.name or None
    written = export(args.model, args.preprocessing, args.output_dir, name=name, overwrite=args.overwrite)
    print(f"wrote {written}: model.onnx, preprocess.json, README.md, triton/")
    return 0


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the trained model (.keras or .h5)")
    parser.add_argument("--preprocessing", required=True, help="its preprocessing (model.preprocessing.json)")
    parser.add_argument("--output-dir", required=True, help="the bundle's directory (new, empty, or a bundle)")
    parser.add_argument("--name", default="", help="the model's name in triton/ (default: the model file's stem)")
    parser.add_argument("--overwrite", action="store_true", help="replace the bundle in --output-dir")


# -- serve ----------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from ..deploy.serve import serve

    def announce(where: str) -> None:
        print(f"{where}\nCtrl-C stops it.", flush=True)

    serve(args.bundle, host=args.host, port=args.port, grpc_port=args.grpc_port, announce=announce)
    return 0


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="the directory `mlaas4hep export` wrote")
    parser.add_argument(
        "--host", default="127.0.0.1", help="where to listen (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    parser.add_argument("--grpc-port", type=int, default=None, help="MLServer's gRPC port (default: --port + 1)")


# -- workflow -------------------------------------------------------------------------------------


def _workflow(args: argparse.Namespace) -> int:
    from .lists import parse_labels, read_list
    from .params import WorkflowParams, load_params

    if args.dtype not in (None, "root"):
        msg = f"--dtype={args.dtype!r}: only ROOT files are supported (--dtype=root)"
        raise MLaaS4HEPError(msg)
    if args.params is None:  # as the original: params.json when it is there, defaults otherwise
        params = load_params("params.json") if Path("params.json").is_file() else WorkflowParams()
    else:
        params = load_params(args.params)
    if args.workflow_verbose is not None:
        params = dataclasses.replace(params, verbose=args.workflow_verbose)
    verbose = params.verbose
    _setup_logging(verbose, chunk_reads=True)
    files = read_list(args.files, "--files")
    labels = parse_labels(args.labels)

    from .preproc import load_preproc
    from .quiet import import_keras
    from .run import run_workflow

    preproc = load_preproc(args.preproc) if args.preproc else None  # its errors before Keras loads
    import_keras(verbose)
    result = run_workflow(files, labels, args.model, params, specs=args.specs, fout=args.fout, preproc=preproc)
    if verbose <= 0:  # at level 0 the log says nothing: still tell the result
        print("test set: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()) + f"; seed {result.seed}")
    return 0


def _add_workflow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", required=True, help="ROOT files: a list file (one a line, # comments) or a,b,c")
    parser.add_argument(
        "--labels", required=True, help="one label per file (list file or 1,0), or the name of a label branch"
    )
    parser.add_argument("--model", required=True, help="Python file defining model(idim) -> compiled Keras model")
    parser.add_argument(
        "--params", default=None, help="params.json (nevts, chunk_size, epochs, ...); default ./params.json if present"
    )
    parser.add_argument("--specs", default=None, help="specs JSON to reuse (written if missing or outdated)")
    parser.add_argument("--fout", default=None, help="save the trained model here (.keras)")
    parser.add_argument("--preproc", default=None, help="preproc.json: new branches (aliases), cuts, branches to drop")
    parser.add_argument("--dtype", default=None, help="input data type; only root is supported")
    parser.add_argument(
        "-v",
        "--verbose",
        dest="workflow_verbose",
        type=int,
        default=None,
        help="0 quiet, 1 progress, 2 debug (default: params' verbose)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``mlaas4hep`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="mlaas4hep", description="Train Keras models on ROOT files, chunk by chunk.")
    parser.add_argument("-v", "--verbose", type=int, default=1, help="0: quiet, 1: progress (default), 2: debug")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="write two synthetic demo ROOT files, train the recipe's model on them and save it"
    )
    demo.add_argument("--directory", default="demo_data", help="where to write the demo files (default demo_data)")
    demo.add_argument("--events", type=int, default=50_000, help="events per demo file (default 50000)")
    demo.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the demo files and of the training (default 1)")
    demo.add_argument("--chunk-size", type=int, default=10_000, help="events per chunk (default 10000)")
    demo.add_argument("--batch-size", type=int, default=100, help="events per batch (default 100)")
    demo.add_argument("--hist", default="", help="directory for plots (default: no plots)")
    demo.set_defaults(func=_demo)

    specs = sub.add_parser("specs", help="first pass over ROOT files: a table of branches (the original reader --info)")
    specs.add_argument(
        "files", nargs="+", metavar="FILE", help="ROOT files (file.root or file.root:tree), or list files"
    )
    specs.add_argument("--tree", default="Events", help="tree for files that do not name one (default Events)")
    specs.add_argument("--branches", default="", help="branches to include: a,b or patterns Jet_* (default all)")
    specs.add_argument(
        "--exclude",
        default="run,event,luminosityBlock",
        help='branches to leave out (default run,event,luminosityBlock; "" for none)',
    )
    specs.add_argument("--redirector", default="", help="prefix for bare file names, e.g. root://host/")
    specs.add_argument("-o", "--output", default=None, help="write the specs JSON here")
    specs.set_defaults(func=_specs)

    predict = sub.add_parser("predict", help="write a trained model's scores of ROOT files as friend trees")
    _add_predict_arguments(predict)
    predict.set_defaults(func=_predict)

    export = sub.add_parser(
        "export", help="write a trained model as ONNX, weaver-style preprocess.json and a Triton repository"
    )
    _add_export_arguments(export)
    export.set_defaults(func=_export)

    serve = sub.add_parser(
        "serve", help="serve an exported bundle over the Open Inference Protocol v2 (HTTP), on MLServer"
    )
    _add_serve_arguments(serve)
    serve.set_defaults(func=_serve)

    workflow = sub.add_parser("workflow", help="the original MLaaS4HEP workflow (same flags as the workflow command)")
    _add_workflow_arguments(workflow)
    workflow.set_defaults(func=_workflow)
    return parser


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except MLaaS4HEPError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 2  # not reached: parser.exit raises SystemExit


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mlaas4hep`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "workflow":  # the workflow takes its level from params.json or its own -v
        _setup_logging(args.verbose)
    return _run(parser, args)


def workflow_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workflow`` command, the original's ``workflow.py``.

    ``workflow --files=files.txt --labels=labels.txt --model=keras_model.py --params=params.json
    [--specs=specs.json] [--fout=model.keras]``
    """
    parser = argparse.ArgumentParser(
        prog="workflow", description="Train a Keras model on ROOT files, as the original MLaaS4HEP workflow.py."
    )
    _add_workflow_arguments(parser)
    parser.set_defaults(func=_workflow)
    return _run(parser, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
