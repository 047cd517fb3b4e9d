"""The batch contract (mlaas4hep.stream.epochs): which epoch and slot each batch index names."""

from __future__ import annotations

import multiprocessing
import pickle
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlaas4hep.stream.epochs import EpochTracker


@given(n=st.integers(1, 30), by_arrival=st.booleans(), data=st.data())
def test_the_indices_of_an_epoch_name_its_slots_once_each(n, by_arrival, data):
    tracker = EpochTracker(n, by_arrival=by_arrival, shared=False)
    tracker.begin_epoch()
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
    assert tracker.completed == 1 and tracker.epoch == 0
    tracker.end_epoch()
    assert tracker.epoch == 1 and tracker.assign(order[0])[0] == 1


def test_asking_again_after_a_whole_epoch_starts_the_next():
    tracker = EpochTracker(3, by_arrival=True, shared=False)
    tracker.begin_epoch()
    assert [tracker.assign(i) for i in (2, 0, 1)] == [(0, 0), (0, 1), (0, 2)]
    assert tracker.assign(2) == (1, 0)  # TensorFlow asks for the next epoch before on_epoch_end
    tracker.end_epoch()  # ... which then does not end that next epoch
    assert tracker.epoch == 1 and tracker.assign(0) == (1, 1)


def test_requests_outside_an_epoch_are_forgotten_those_within_kept():
    tracker = EpochTracker(4, by_arrival=True, shared=False)
    tracker.assign(0), tracker.assign(1)  # a probe, or a look in a notebook
    tracker.end_epoch()  # Keras' reset before the first epoch
    tracker.begin_epoch()
    assert tracker.assign(3) == (0, 0)  # the epoch starts from its first slot again
    tracker.assign(2)
    tracker.end_epoch()  # not served whole (steps_per_epoch, an interrupted fit): it carries on
    tracker.begin_epoch()
    assert tracker.assign(0) == (0, 2) and tracker.assign(1) == (0, 3)
    assert tracker.completed == 1


def test_threads_draw_distinct_slots():
    n = 400
    tracker = EpochTracker(n, by_arrival=True, shared=False)
    got: list[tuple[int, int]] = []
    lock = threading.Lock()

    def ask(indices: range) -> None:
        for i in indices:
            slot = tracker.assign(i)
            with lock:
                got.append(slot)

    threads = [threading.Thread(target=ask, args=(range(k, n, 4),)) for k in range(4)]
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
    tracker.end_epoch()
    assert tracker.epoch == 1


def test_a_local_tracker_pickles_with_its_state():
    tracker = EpochTracker(3, by_arrival=False, shared=False)
    tracker.assign(1)
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy.assign(1) == (0, 1) and copy.assign(0) == (0, 0)


def test_a_pass_after_an_interrupted_one_completes_its_epoch():
    """A new fit over an interrupted pass serves each slot once, given again in order by arrival, so that
    its chunks are read one after another (the interrupted pass's slots coming back wherever their
    indices fell in the new order read a 6-chunk file 20 times in one epoch)."""
    tracker = EpochTracker(6, by_arrival=True, shared=False)
    tracker.begin_epoch()
    [tracker.assign(i) for i in (4, 2)]  # then the fit is interrupted: no on_epoch_end
    tracker.assign(0), tracker.assign(1)  # the next fit's probe
    tracker.end_epoch()  # ... and its reset
    tracker.begin_epoch()
    got = {i: tracker.assign(i) for i in (0, 5, 1, 3, 2)}
    assert tracker.completed == 0  # index 4 not yet asked in this pass: its slot is not either
    got[4] = tracker.assign(4)
    assert [got[i] for i in (0, 5, 1, 3, 2, 4)] == [(0, s) for s in range(6)]
    assert tracker.completed == 1
    assert tracker.assign(3) == (1, 0)  # asked again in this pass, once the epoch is whole: the next epoch


@given(n=st.integers(2, 40), data=st.data())
def test_a_new_fit_over_an_interrupted_pass_gives_the_slots_in_order(n, data):
    """Whatever the interrupted pass asked, the next fit's pass gives each slot once, and in ascending order
    from its first index of the interrupted pass on (those before it name slots the interrupted pass left),
    unless that index comes once every slot is given (the rare case of the module's docstring)."""
    tracker = EpochTracker(n, by_arrival=True, shared=False)
    tracker.begin_epoch()
    early = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n - 1, unique=True))
    for i in early:
        tracker.assign(i)
    tracker.end_epoch()
    tracker.begin_epoch()
    order = data.draw(st.permutations(range(n)))
    slots = [tracker.assign(i) for i in order]
    tracker.end_epoch()
    assert {e for e, _ in slots} == {0} and sorted(s for _, s in slots) == list(range(n))
    first = next(k for k, i in enumerate(order) if i in early)
    after = [s for _, s in slots[first:]]
    assert after == sorted(after) or first + len(early) == n
    assert tracker.epoch == 1


@given(n=st.integers(6, 40), data=st.data())
def test_a_fit_interrupted_in_its_second_short_pass_is_completed_by_the_next(n, data):
    """PyTorch's backend begins a pass, asks one index and ends it; a fit interrupted in the pass after
    looks like steps_per_epoch. The next fit asks every index in a new order: each names its slot of the
    same epoch, also an index of the interrupted pass asked for last (it began the next epoch before).
    Exact while the interrupted pass asked for less than a third of the epoch (see the module's docstring)."""
    k = data.draw(st.integers(1, (n - 3) // 3))
    asked = data.draw(st.permutations(range(n)))
    tracker = EpochTracker(n, by_arrival=True, shared=False)
    tracker.begin_epoch()
    first = tracker.assign(asked[0])
    tracker.end_epoch()  # the first short pass
    tracker.begin_epoch()
    early = {i: tracker.assign(i) for i in asked[1 : 1 + k]}
    tracker.end_epoch()  # interrupted: the second short pass
    order = data.draw(st.permutations(range(n)))
    tracker.begin_epoch()
    got = {i: tracker.assign(i) for i in order}
    tracker.end_epoch()
    assert {e for e, _ in got.values()} == {0} and sorted(s for _, s in got.values()) == list(range(n))
    assert tracker.epoch == 1
    assert first[0] == 0 and {e for e, _ in early.values()} == {0}


@given(n=st.integers(8, 40), data=st.data())
def test_passes_shorter_than_the_epoch_with_batches_read_ahead(n, data):
    """steps_per_epoch on TensorFlow: each pass asks its ``steps`` indices and up to ``ahead`` more before
    ``on_epoch_end`` (read ahead), never beyond the end of Keras' permutation; the next pass goes on from
    there. The read-ahead does not make a pass look like a new fit's: each permutation is one epoch."""
    steps = data.draw(st.integers(1, n // 4))
    ahead = data.draw(st.integers(0, 3))
    perms = [data.draw(st.permutations(range(n))) for _ in range(4)]
    requests = [i for p in perms for i in p]
    tracker = EpochTracker(n, by_arrival=True, shared=False)
    served: list[tuple[int, int]] = []
    consumed = 0
    while consumed < 3 * n:
        tracker.begin_epoch()
        stop = min(consumed + steps, (consumed // n + 1) * n)  # a pass ends with its permutation
        consumed = max(consumed, stop)
        extra = data.draw(st.integers(0, ahead))
        while len(served) < max(stop, min(consumed + extra, len(requests))):
            served.append(tracker.assign(requests[len(served)]))
        tracker.end_epoch()
    for epoch in range(3):
        part = served[epoch * n : (epoch + 1) * n]
        assert {e for e, _ in part} == {epoch} and sorted(s for _, s in part) == list(range(n))


def test_a_new_fit_asking_the_interrupted_indices_last_stays_in_the_epoch():
    """The case the property above finds 1 run in about 500: the next fit asks every index the interrupted
    fit did not before any it did, so the epoch's slots run out first. Its pass, longer than the short
    pass, is no steps_per_epoch pass: the indices asked last name their slots of the same epoch."""
    n = 12
    tracker = EpochTracker(n, by_arrival=True, shared=False)
    tracker.begin_epoch()
    first = tracker.assign(7)
    tracker.end_epoch()
    tracker.begin_epoch()
    early = {i: tracker.assign(i) for i in (3, 9, 0)}
    tracker.end_epoch()
    tracker.begin_epoch()
    got = {i: tracker.assign(i) for i in [*(i for i in range(n) if i not in (7, 3, 9, 0)), 7, 9, 3, 0]}
    tracker.end_epoch()
    assert {e for e, _ in got.values()} == {0} and sorted(s for _, s in got.values()) == list(range(n))
    assert got[7] == first and all(got[i] == slot for i, slot in early.items())
    assert tracker.epoch == 1


@given(n=st.integers(2, 25), data=st.data())
def test_passes_shorter_than_the_epoch_go_on_through_it(n, data):
    """Keras' steps_per_epoch: one permutation of the indices after another, cut into passes of ``steps``.

    Told apart from an interrupted fit by the second short pass, so exact for
    ``steps`` up to half the epoch (the first epoch's indices cannot run out before).
    """
    steps = data.draw(st.integers(1, n // 2))
    tracker = EpochTracker(n, by_arrival=True, shared=False)
    requests = [i for _ in range(3) for i in data.draw(st.permutations(range(n)))]
    served: list[tuple[int, int]] = []
    for start in range(0, len(requests), steps):
        tracker.begin_epoch()
        served.extend(tracker.assign(i) for i in requests[start : start + steps])
        tracker.end_epoch()
    for epoch in range(3):  # each permutation of the indices is one epoch, each slot once
        part = served[epoch * n : (epoch + 1) * n]
        assert {e for e, _ in part} == {epoch} and sorted(s for _, s in part) == list(range(n))
