"""Text files of one record per line (CSV, JSON lines), in blocks of whole lines of bounded size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

__all__ = ["BLOCK_BYTES", "line_blocks"]

BLOCK_BYTES = 8 * 2**20
"""Bytes of text parsed at a time (8 MiB): with its Arrow table, what converting a text file holds in memory."""


def line_blocks(path: Path, size: int | None = None) -> Iterator[bytes]:
    """The bytes of ``path`` in blocks of about ``size`` bytes (default :data:`BLOCK_BYTES`), each ending a line.

    A line longer than ``size`` makes a longer block. The last block may lack
    its final newline. Empty blocks are never yielded.
    """
    size = size or BLOCK_BYTES
    rest = b""
    with path.open("rb") as f:
        while True:
            data = f.read(size)
            if not data:
                break
            data = rest + data if rest else data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no end of line yet: a line longer than a block
                rest = data
                continue
            rest = data[cut:]
            yield data[:cut]
    if rest:
        yield rest
