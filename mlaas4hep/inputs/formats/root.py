"""ROOT files (TTree or RNTuple) with uproot: opening them, their branches' kinds, and :class:`RootTable`."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import awkward as ak
import numpy as np
import uproot

from ...errors import FileAccessError, ParameterError, TreeError
from ..remote import open_options
from .baskets import BasketReader, Unsupported
from .decompression import default_zlib
from .table import DEFAULT_TIMEOUT, BranchInfo, Table, check_local, check_ranges, fixed_kind

if TYPE_CHECKING:
    from ..sources import FileSource

__all__ = [
    "READER",
    "RootTable",
    "describe_branches",
    "file_uuid",
    "kind_of_form",
    "open_file",
    "open_tree",
    "opened_tree",
]

log = logging.getLogger(__name__)

READER = "MLAAS4HEP_READER"
"""Environment variable: ``uproot`` has uproot read every branch (no :class:`BasketReader`); ``baskets``, or
unset, the default. Another value is a :class:`~mlaas4hep.errors.ParameterError` before the first file is opened."""

_TREES = ("TTree", "ROOT::RNTuple", "ROOT::Experimental::RNTuple")


def open_file(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Open ``source``'s file with uproot, raising :class:`FileAccessError` with its name.

    Its ZLIB baskets will be decompressed with ISA-L where uproot still uses its
    default (:mod:`mlaas4hep.inputs.formats.decompression`). A remote file waits at
    most ``timeout`` seconds for its server, to connect and for each read.
    """
    if not source.is_remote:
        check_local(source)
    default_zlib()  # ZLIB baskets inflated by ISA-L, unless the user chose otherwise
    options = open_options(source.path, timeout) if source.is_remote else {}
    try:
        file = uproot.open(source.path, **options)
    except FileNotFoundError as err:
        msg = f"ROOT file {source.path!r} does not exist ({err})"
        raise FileAccessError(msg) from err
    except OSError as err:
        msg = f"cannot open {source.path!r}: {err}"
        raise FileAccessError(msg) from err
    except Exception as err:  # uproot raises ValueError and others for non-ROOT bytes
        check_ranges(source, timeout)
        msg = f"{source.path!r} is not a readable ROOT file: {type(err).__name__}: {err}"
        raise FileAccessError(msg) from err
    if not source.is_remote:  # a cut file still opens: its header says where it should end
        size = os.path.getsize(source.local_path)
        end = int(getattr(file.file, "fEND", 0) or 0)
        if end > size:
            file.close()
            msg = f"ROOT file {source.path!r} is truncated: {size} bytes, its header says {end}"
            raise FileAccessError(msg)
    return file


def open_tree(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> tuple[Any, Any]:
    """Open a source and return ``(file, tree)``; the caller closes ``file``.

    Raises
    ------
    FileAccessError
        The file is missing, a directory, or not ROOT; a remote server did not
        answer within ``timeout`` seconds, or does not serve byte ranges.
    TreeError
        The file has no TTree or RNTuple of that name.
    """
    file = open_file(source, timeout)
    try:
        classes = file.classnames()
    except Exception as err:
        file.close()
        msg = f"{source.path!r} is not a readable ROOT file: {type(err).__name__}: {err}"
        raise FileAccessError(msg) from err
    known = {key.split(";")[0]: cls for key, cls in classes.items()}
    cls = known.get(source.tree)
    if cls is None:
        file.close()
        if not known:  # garbage where a ROOT directory should be: a web server that ignores byte ranges?
            check_ranges(source, timeout)
        trees = sorted(k for k, c in known.items() if c in _TREES)
        msg = f"no tree {source.tree!r} in {source.path!r}; trees there: {trees or 'none'}"
        raise TreeError(msg)
    if cls not in _TREES:
        file.close()
        msg = f"{source.tree!r} in {source.path!r} is a {cls}, not a TTree or RNTuple"
        raise TreeError(msg)
    try:
        obj = file[source.tree]
    except Exception as err:
        file.close()
        msg = f"cannot read tree {source.tree!r} from {source.path!r}: {type(err).__name__}: {err}"
        raise FileAccessError(msg) from err
    return file, obj


@contextlib.contextmanager
def opened_tree(source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Any]:
    """``with opened_tree(source) as tree:``: the tree of :func:`open_tree`, its file closed on leaving."""
    file, tree = open_tree(source, timeout)
    try:
        yield tree
    finally:
        file.close()


def file_uuid(file: Any) -> str | None:
    """The ROOT file's UUID as a string, or None if uproot cannot tell."""
    try:
        return str(file.file.uuid)
    except Exception:  # noqa: BLE001 - a UUID is a bonus, not a requirement
        return None


def kind_of_form(form: ak.forms.Form) -> tuple[str, str]:
    """Classify an awkward form into (kind, dtype).

    A fixed-size array of numbers (``double[3]``, ``int[2][3]``: a
    ``RegularForm``, or a ``NumpyForm`` with an inner shape) is ``"fixed[3]"``,
    ``"fixed[2][3]"`` (see :mod:`mlaas4hep.specs.kinds`); one of anything
    else, or of size 0, is a ``"fixed-size array"``.
    """
    params = form.parameters or {}
    if params.get("__array__") in ("string", "bytestring"):
        return "string", "string"
    if isinstance(form, (ak.forms.NumpyForm, ak.forms.RegularForm)):
        return _numbers_kind(form)
    if isinstance(form, (ak.forms.ListOffsetForm, ak.forms.ListForm)):
        content = form.content
        if (content.parameters or {}).get("__array__") in ("char", "byte"):
            return "string", "string"
        if isinstance(content, ak.forms.NumpyForm) and not content.inner_shape:
            return "jagged", content.primitive
        if isinstance(content, (ak.forms.ListOffsetForm, ak.forms.ListForm, ak.forms.RegularForm)):
            return "doubly-jagged", "object"
        return "object", "object"
    return "object", "object"


def _numbers_kind(form: ak.forms.Form) -> tuple[str, str]:
    """(kind, dtype) of a ``NumpyForm`` or ``RegularForm``: flat, a fixed-size array, or a fixed-width string."""
    shape: list[int] = []
    while isinstance(form, ak.forms.RegularForm):
        shape.append(form.size)
        form = form.content
    if not isinstance(form, ak.forms.NumpyForm):
        return "fixed-size array", "object"
    if (form.parameters or {}).get("__array__") in ("char", "byte"):
        return ("string", "string") if len(shape) == 1 else ("fixed-size array", "object")
    shape.extend(form.inner_shape)
    if not shape:
        return "flat", form.primitive
    if 0 in shape:
        return "fixed-size array", form.primitive
    return fixed_kind(shape), form.primitive


def describe_branches(obj: Any) -> list[BranchInfo]:
    """List the top-level branches (TTree) or fields (RNTuple) of ``obj`` with their kinds."""
    infos = []
    if isinstance(obj, uproot.TTree):
        for name, branch in obj.items(recursive=False):
            if len(branch.branches) > 0:
                infos.append(BranchInfo(name, "object", "object"))
                continue
            try:
                form = branch.interpretation.awkward_form(branch.file)
            except Exception:  # noqa: BLE001 - an uninterpretable branch is an object
                infos.append(BranchInfo(name, "object", "object"))
                continue
            kind, dtype = kind_of_form(form)
            infos.append(BranchInfo(name, kind, dtype))
        return infos
    form = obj.to_akform()
    if isinstance(form, tuple):  # uproot >= 5.7 returns (form, extra)
        form = form[0]
    for name in form.fields:
        kind, dtype = kind_of_form(form.content(name))
        infos.append(BranchInfo(name, kind, dtype))
    return infos


class RootTable(Table):
    """A TTree or RNTuple of a ROOT file, read with uproot (see :class:`~mlaas4hep.inputs.formats.table.Table`).

    ``file`` and ``tree`` are uproot's objects. :meth:`blocks` are the
    clusters, where every branch asked for starts a basket. The numeric
    branches of a local TTree are read by a
    :class:`~mlaas4hep.inputs.formats.baskets.BasketReader` (the same arrays,
    without uproot's Python around each basket) in the calling thread, unless
    the environment variable :data:`READER` is ``uproot``; every other branch
    by uproot, which decompresses on the executor of :meth:`make_executor`
    (two threads).
    """

    def __init__(self, source: FileSource, file: Any, tree: Any, *, reader: str = "uproot") -> None:
        super().__init__(source)
        self.file = file
        self.tree = tree
        self.baskets: BasketReader | None = None
        if reader == "baskets" and not source.is_remote and isinstance(tree, uproot.TTree):
            self.baskets = BasketReader(source.local_path, tree)
        self._top: dict[str, int] | None = None  # the tree's top-level branches, in its order

    @classmethod
    def open(cls, source: FileSource, timeout: float = DEFAULT_TIMEOUT) -> RootTable:
        """Open ``source``'s tree (see :func:`open_tree` for the errors; :data:`READER` is checked first)."""
        reader = _reader()
        file, tree = open_tree(source, timeout)
        return cls(source, file, tree, reader=reader)

    @property
    def entries(self) -> int:
        return int(self.tree.num_entries)

    def branches(self) -> list[BranchInfo]:
        return describe_branches(self.tree)

    @property
    def uuid(self) -> str | None:
        return file_uuid(self.file)

    def iterate(self, names: Sequence[str], step_size: int | str) -> Iterator[ak.Array]:
        yield from self.tree.iterate(filter_name=list(names), step_size=step_size, library="ak")

    def arrays(self, names: Sequence[str], start: int, stop: int, executor: Any = None) -> ak.Array:
        layouts = self._read_baskets(names, start, stop)
        rest = [name for name in names if name not in layouts]
        if not layouts:
            return self._uproot_arrays(rest, start, stop, executor)
        if rest:
            arrays = self._uproot_arrays(rest, start, stop, executor)
            layouts.update((field, arrays.layout.content(field)) for field in arrays.fields)
        assert self._top is not None
        fields = sorted(layouts, key=self._top.__getitem__)  # uproot's order: the tree's
        return ak.Array(ak.contents.RecordArray([layouts[f] for f in fields], fields, length=stop - start))

    def _uproot_arrays(self, names: Sequence[str], start: int, stop: int, executor: Any) -> ak.Array:
        wanted = frozenset(names)
        return self.tree.arrays(
            filter_name=wanted.__contains__,  # a set look-up: a list of names is matched like globs
            entry_start=start,
            entry_stop=stop,
            library="ak",
            decompression_executor=executor,
            array_cache=None,  # the file's default cache would hold up to 100 MB of arrays read once
        )

    def _read_baskets(self, names: Sequence[str], start: int, stop: int) -> dict[str, Any]:
        """The layouts of the branches :attr:`baskets` reads, in this thread (fewer CPU seconds than on ``executor``).

        Nothing if any name is not a top-level branch (uproot then reads all of
        them, as it names their fields), or the range is empty. A branch one of
        whose baskets is :class:`Unsupported` is left to uproot from then on.
        """
        if self.baskets is None or not 0 <= start < stop:
            return {}
        if self._top is None:
            self._top = {name: i for i, name in enumerate(self.tree.keys(recursive=False))}
        if not all(name in self._top for name in names):
            return {}
        reader = self.baskets
        layouts = {name: _attempt(reader, name, start, stop) for name in names if reader.supports(name)}
        return {name: layout for name, layout in layouts.items() if layout is not None}

    def blocks(self, names: Sequence[str]) -> np.ndarray | None:
        try:
            return np.asarray(self.tree.common_entry_offsets(filter_name=list(names)), dtype=np.int64)
        except Exception:  # noqa: BLE001 - RNTuple or an odd tree: read ranges as asked
            return None

    def make_executor(self) -> Any:
        return uproot.source.futures.ThreadPoolExecutor(max_workers=2)

    @property
    def decompressed_seconds(self) -> float:
        return 0.0 if self.baskets is None else self.baskets.inflate_seconds

    def close(self) -> None:
        if self.baskets is not None:
            self.baskets.close()
        self.file.close()


def _reader() -> str:
    """Who reads the numeric branches of local TTrees: :data:`READER`'s value, ``baskets`` by default."""
    chosen = os.environ.get(READER, "").strip().lower() or "baskets"
    if chosen not in ("baskets", "uproot"):
        msg = f"{READER}={os.environ[READER]!r}: must be 'baskets' (the default) or 'uproot'"
        raise ParameterError(msg)
    return chosen


def _attempt(reader: BasketReader, name: str, start: int, stop: int) -> Any:
    """Branch ``name``'s layout for ``[start, stop)``, or None (and the branch left to uproot) if unsupported."""
    try:
        return reader.read(name, start, stop)
    except Unsupported as why:
        log.debug("%s: %s; read with uproot", reader.path, why)
        reader.forget(name)
        return None
