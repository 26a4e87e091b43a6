"""geoseg.priorities: the local scheduler runs ready tasks by their priority annotations."""

from __future__ import annotations

import threading

import dask
import dask.array as dsa
import numpy as np
from dask.callbacks import Callback

from geoseg import priorities
from geoseg.inference import predict
from geoseg.models import Model
from tests.helpers import make_card, make_stack
from tests.test_predict_seams import FakeConvNet, random_scene


def _independent(n: int) -> tuple[dsa.Array, list]:
    """``n`` independent one-element blocks, each appending its index to the returned list when it
    runs; block i has priority ``(7 * i) % n`` (a permutation: neither dask's order nor its reverse)."""
    ran, lock = [], threading.Lock()

    def block(i):
        with lock:
            ran.append(i)
        return np.array([i])

    with dask.annotate(priority=lambda key: (7 * key[1]) % n):
        tasks = [dask.delayed(block, pure=True)(i, dask_key_name=("block", i)) for i in range(n)]
    return dsa.concatenate([dsa.from_delayed(t, shape=(1,), dtype=int) for t in tasks]), ran


def test_annotations_are_collected_before_optimization():
    arr, _ = _independent(5)
    given = priorities.annotated([arr])
    assert given == {("block", i): (7 * i) % 5 for i in range(5)}
    with dask.annotate(priority=3):
        const = dask.delayed(np.ones, pure=True)(2, dask_key_name=("const", 0))
    const = dsa.from_delayed(const, shape=(2,), dtype=float)
    assert priorities.annotated([const + 1]) == {("const", 0): 3}
    assert priorities.annotated([dsa.ones(4, chunks=2)]) == {}  # nothing annotated: nothing to do


def test_ready_tasks_run_highest_priority_first():
    n = 11
    with dask.config.set(scheduler="threads", num_workers=1):
        arr, ran = _independent(n)
        plain = arr.compute()
        lifo = list(ran)
        ran.clear()
        with priorities.honoured([arr]):
            ordered = arr.compute()
    np.testing.assert_array_equal(plain, ordered)
    by_priority = sorted(range(n), key=lambda i: -((7 * i) % n))
    assert ordered.tolist() == list(range(n)) and ran == by_priority
    assert lifo != by_priority  # what the local scheduler does on its own: the test can fail


def test_a_task_without_priority_takes_the_lowest_of_its_dependencies():
    cb = priorities._ReadyByPriority({"a": 5, "b": 1, "c": 9})
    deps = {"a": set(), "b": set(), "c": set(), "ab": {"a", "b"}, "abc": {"ab", "c"}, "c2": {"c"}, "free": set()}
    state = {"dependencies": deps, "ready": ["free", "a", "b", "c"]}
    cb._start_state(dict.fromkeys(deps), state)
    of = state[cb._STATE_KEY]
    assert (of["ab"], of["abc"], of["c2"], of["free"]) == (1, 1, 9, float("inf"))
    assert state["ready"] == ["b", "a", "c", "free"]  # popped from the end


def test_computations_with_none_of_the_keys_are_left_alone():
    """While the callback is active every local computation calls it, including those that tasks run
    inside themselves (in other threads): those keep their own order and state."""
    arr, ran = _independent(6)

    def nested(block):  # a task running its own small computation, as predict's reads do
        return block + dask.get({"x": 1, "y": (sum, ["x", "x"])}, "y")

    with dask.config.set(scheduler="threads", num_workers=2), priorities.honoured([arr]):
        out = arr.map_blocks(nested, dtype=int).compute()
    assert out.tolist() == [i + 2 for i in range(6)] and sorted(ran) == list(range(6))
    cb = priorities._ReadyByPriority({"a": 1})
    state = {"dependencies": {"x": set()}, "ready": ["x"]}
    cb._start_state({"x": 1}, state)
    assert cb._STATE_KEY not in state


def test_nothing_is_installed_on_a_cluster_or_without_annotations(monkeypatch):
    from geoseg import blocks

    arr, _ = _independent(3)
    before = len(Callback.active)
    with priorities.honoured([dsa.ones(4, chunks=2)]):
        assert len(Callback.active) == before
    monkeypatch.setattr(blocks, "_client", lambda: object())  # a distributed client: its scheduler does this
    with priorities.honoured([arr]):
        assert len(Callback.active) == before
    monkeypatch.undo()
    with priorities.honoured([arr]):
        assert len(Callback.active) == before + 1
    assert len(Callback.active) == before


class _Priorities(Callback):
    """The priorities the callback gave each key of the computation it ordered."""

    def __init__(self):
        super().__init__()
        self.of = {}

    def _posttask(self, key, result, dsk, state, worker_id):  # after every callback's start
        self.of.update(state.get(priorities._ReadyByPriority._STATE_KEY, {}))


def test_every_task_of_a_prediction_gets_its_groups_priority(tmp_path):
    """Through dask's optimization (which fuses and renames keys) every task of predict's graph, and
    every task after it (classes, confidence, stores), is ordered by the tile group it serves."""
    from geoseg.outputs import write_prediction

    card = make_card(tile_size=32, halo=8)
    model = Model(card=card, network=FakeConvNet(2, 2).eval())
    stack = make_stack(random_scene((150, 120), holes=True), ["red", "nir"], chunks=40)
    probe = _Priorities()
    with dask.config.set(scheduler="threads", num_workers=2):
        probs = predict(stack, model, device="cpu")
        with probe:
            write_prediction(probs, card, tmp_path, "scene")
    ours = {k: v for k, v in probe.of.items() if (k[0] if isinstance(k, tuple) else k).startswith(("geoseg-", "store-", "classes-", "confidence-"))}
    kinds = {(k[0] if isinstance(k, tuple) else k).rsplit("-", 1)[0] for k in ours}
    assert {"geoseg-read", "geoseg-prep", "geoseg-infer", "geoseg-blend"} <= kinds, kinds
    assert ours and all(np.isfinite(v) for v in ours.values()), {k: v for k, v in ours.items() if not np.isfinite(v)}
    assert len(set(ours.values())) > 5  # one per tile group, not one for all
