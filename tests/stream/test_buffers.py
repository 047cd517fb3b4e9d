"""Buffers: made on memory of their own, reused only once no batch looks into them."""

from __future__ import annotations

import gc
import mmap
import weakref

import numpy as np

from mlaas4hep.stream.buffers import Buffers, Decoded


def _decoded(buffers: Buffers, n: int) -> Decoded:
    buffer, _ = buffers.take(n)
    X = buffer[:n]
    X[:] = 1.0
    decoded = Decoded(X, None, None, None, buffer)
    del buffer, X
    decoded.count_own_references()
    return decoded


def test_a_buffer_is_reused_once_no_view_of_it_is_held():
    made: list[np.ndarray] = []
    buffers = Buffers(50, 7, made=made.append)
    first = _decoded(buffers, 40)
    if hasattr(mmap, "MAP_PRIVATE"):  # made on a mapping of its own, which views refer to through it
        assert isinstance(first.buffer.base, mmap.mmap) and first.X.base is first.buffer
    assert first.X.dtype == np.float32 and first.buffer.shape == (50, 7) and len(made) == 1
    kept = first.X[:10]  # a batch a caller keeps
    buffers.recycle(first)
    assert buffers.free == 0  # not reused under the kept batch
    np.testing.assert_array_equal(kept, 1.0)
    second = _decoded(buffers, 50)
    buffers.recycle(second)
    assert buffers.free == 1 and len(made) == 2
    reused, written = buffers.take(50)
    assert reused is made[1] and written is None


def test_a_dropped_buffer_frees_its_memory():
    buffers = Buffers(1000, 100)
    buffer, _ = buffers.take(1000)
    buffer[:] = 2.0
    view = buffer[5:10]
    gone = weakref.ref(buffer)
    del buffer
    gc.collect()
    assert gone() is not None  # the view keeps the memory alive, and readable
    np.testing.assert_array_equal(view, 2.0)
    del view
    gc.collect()
    assert gone() is None
