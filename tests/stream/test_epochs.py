"""The batch contract (mlaas4hep.stream.epochs): which epoch and slot each batch index names."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlaas4hep.stream.epochs import EpochTracker


@given(n=st.integers(1, 30), by_arrival=st.booleans(), data=st.data())
def test_the_indices_of_an_epoch_name_its_slots_once_each(n, by_arrival, data):
    tracker = EpochTracker(n, by_arrival=by_arrival, shared=False)
    order = data.draw(st.permutations(range(n)))
    # repeats within the epoch (another thread, a second look) name the same slot
    repeats = data.draw(st.lists(st.sampled_from(order[: n // 2]), max_size=5)) if n > 1 else []
    seen: dict[int, tuple[int, int]] = {}
    for i in [*order[: n // 2], *repeats, *order[n // 2 :]]:
        got = tracker.assign(i)
        assert seen.setdefault(i, got) == got
    assert sorted(slot for _, slot in seen.values()) == list(range(n))
    if by_arrival:  # slots in the order the indices were first asked for: chunks read one after another
        assert [seen[i][1] for i in order] == list(range(n))
    else:
        assert all(seen[i] == (0, i) for i in range(n))
    assert tracker.completed == tracker.epoch == 1
    assert tracker.served(0) == (n, by_arrival or order == sorted(order))
    assert tracker.assign(order[0])[0] == 1  # rule 3: asked again once every slot is given


@given(
    n=st.integers(1, 12),
    epochs=st.integers(1, 4),
    ahead=st.integers(0, 12),
    steps=st.integers(1, 12),
    by_arrival=st.booleans(),
    data=st.data(),
)
def test_keras_passes_serve_every_slot_once_per_epoch_whatever_is_read_ahead(n, epochs, ahead, steps, by_arrival, data):
    """A pass per epoch, each a permutation; the next epoch's first requests may come before the last ones are
    trained (read ahead), and ``steps_per_epoch`` may cut the stream anywhere: rule 3 alone numbers the epochs."""
    tracker = EpochTracker(n, by_arrival=by_arrival, shared=False)
    stream = [i for _ in range(epochs) for i in data.draw(st.permutations(range(n)))]
    served = [tracker.assign(i) for i in stream]
    per_epoch = Counter(e for e, _ in served)
    assert per_epoch == dict.fromkeys(range(epochs), n)
    assert all(sorted(s for e, s in served if e == k) == list(range(n)) for k in range(epochs))
    assert tracker.epoch == epochs and tracker.remaining == n
    del ahead, steps  # how the stream is cut into passes changes nothing: no hook is called


def test_restart_serves_the_unfinished_epoch_again_whole():
    tracker = EpochTracker(4, by_arrival=True, shared=False)
    assert [tracker.assign(i) for i in (3, 1, 0, 2)] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert [tracker.assign(i) for i in (2, 0)] == [(1, 0), (1, 1)]  # read ahead, or an interrupted fit
    tracker.restart()  # Keras begins a fit
    assert tracker.epoch == 1 and tracker.served(1) == (0, True) and tracker.served(0) == (4, True)
    assert [tracker.assign(i) for i in (1, 0, 3, 2)] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    tracker.restart()  # after a whole epoch: nothing to forget
    assert tracker.assign(0) == (2, 0)


def test_a_look_before_a_loop_names_the_same_batch():
    tracker = EpochTracker(3, by_arrival=True, shared=False)
    first = tracker.assign(0)
    assert [tracker.assign(i) for i in range(3)] == [first, (0, 1), (0, 2)]


@given(n=st.integers(1, 20), by_arrival=st.booleans(), data=st.data())
def test_a_resumed_epoch_serves_the_slots_after_its_offset_then_whole_epochs(n, by_arrival, data):
    served = data.draw(st.integers(0, n))
    tracker = EpochTracker(n, by_arrival=by_arrival, shared=False)
    tracker.assign(0)
    tracker.resume(5, served)
    epoch, left = (6, n) if served == n else (5, n - served)
    assert tracker.epoch == epoch and tracker.remaining == left
    assert tracker.served(epoch) == (n - left, True)
    order = data.draw(st.permutations(range(left)))  # Keras asks for num_batches = remaining indices
    got = [tracker.assign(i) for i in order]
    assert {e for e, _ in got} <= {epoch} and sorted(s for _, s in got) == list(range(n - left, n))
    if not by_arrival:
        assert all(s == n - left + i for i, (_, s) in zip(order, got, strict=True))
    assert tracker.remaining == n  # the next epoch is whole
    nxt = [tracker.assign(i) for i in data.draw(st.permutations(range(n)))]
    assert {e for e, _ in nxt} == {epoch + 1} and sorted(s for _, s in nxt) == list(range(n))


def test_an_index_beyond_a_resumed_epoch_in_file_order_is_an_index_error():
    tracker = EpochTracker(5, by_arrival=False, shared=False)
    tracker.resume(0, 3)
    assert tracker.assign(1) == (0, 4)
    with pytest.raises(IndexError, match="beyond the 2 batches left of epoch 0"):
        tracker.assign(2)


def test_slots_asked_out_of_order_in_file_order_are_not_a_place():
    tracker = EpochTracker(4, by_arrival=False, shared=False)
    tracker.assign(0), tracker.assign(2)
    assert tracker.served(0) == (2, False)
    assert tracker.served(1) == (0, True)


def test_threads_draw_distinct_slots():
    n = 200
    tracker = EpochTracker(n, by_arrival=True, shared=False)
    got: list[tuple[int, int]] = []
    lock = threading.Lock()

    def work(indices: range) -> None:
        for i in indices:
            r = tracker.assign(i)
            with lock:
                got.append(r)

    threads = [threading.Thread(target=work, args=(range(k, n, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for _, s in got) == list(range(n)) and {e for e, _ in got} == {0}


def _child(tracker: EpochTracker, indices: list[int], out: multiprocessing.Queue) -> None:
    out.put([tracker.assign(i) for i in indices])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="forks")
def test_a_shared_tracker_is_one_across_forked_processes():
    tracker = EpochTracker(6, by_arrival=True, shared=True)
    tracker.assign(5)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    children = [context.Process(target=_child, args=(tracker, idx, out)) for idx in ([0, 1], [2, 3, 4])]
    for c in children:
        c.start()
    slots = [s for _ in children for _, s in out.get(timeout=30)]
    for c in children:
        c.join(10)
    assert sorted(slots) == [1, 2, 3, 4, 5] and tracker.completed == 1
    assert tracker.assign(5) == (1, 0)


def test_a_local_tracker_pickles_with_its_state():
    tracker = EpochTracker(3, by_arrival=False, shared=False)
    tracker.assign(1)
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy.assign(1) == (0, 1) and copy.assign(0) == (0, 0)
