"""geoseg.collector: collections during a prediction leave the long-lived objects alone, and only then."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from geoseg.collector import spare_long_lived
from geoseg.models import Model
from geoseg.outputs import write_prediction
from geoseg.inference import predict
from tests.helpers import make_card, make_stack
from tests.test_predict_seams import FakeConvNet, random_scene


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def unfrozen():
    assert gc.get_freeze_count() == 0
    yield
    assert gc.get_freeze_count() == 0, "a scope left objects frozen"


def test_objects_made_before_the_scope_are_left_out_of_its_collections_and_freed_after_it():
    old = Node()
    gone = weakref.ref(old)
    with spare_long_lived():
        assert gc.get_freeze_count() > 0
        del old
        new = Node()
        new_gone = weakref.ref(new)
        del new
        gc.collect()
        assert new_gone() is None  # made in the scope: collected as usual
        assert gone() is not None  # made before: not walked
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None  # nothing is left uncollected


def test_nested_scopes_freeze_once_for_the_outermost():
    with spare_long_lived():
        frozen = gc.get_freeze_count()
        with spare_long_lived():
            assert gc.get_freeze_count() >= frozen
        assert gc.get_freeze_count() >= frozen > 0
    assert gc.get_freeze_count() == 0


def test_concurrent_scopes_unfreeze_when_the_last_one_ends():
    inside, leave = threading.Event(), threading.Event()

    def other():
        with spare_long_lived():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    t.start()
    inside.wait(10)
    with spare_long_lived():
        pass
    assert gc.get_freeze_count() > 0  # the other thread's scope is still open
    leave.set()
    t.join()
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_elsewhere_is_left_alone():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with spare_long_lived():
            pass
        assert gc.get_freeze_count() == frozen  # not unfrozen by the scope
    finally:
        gc.unfreeze()


def test_a_disabled_collector_is_left_alone():
    gc.disable()
    try:
        with spare_long_lived():
            assert gc.get_freeze_count() == 0
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_predict_and_write_run_in_a_scope_and_end_it(tmp_path, monkeypatch):
    import geoseg.collector as collector

    seen = []
    freeze = gc.freeze
    monkeypatch.setattr(collector.gc, "freeze", lambda: (seen.append(1), freeze())[1])
    card = make_card(classes=3, tile_size=64, halo=8)
    stack = make_stack(random_scene((130, 100), holes=True), ["red", "nir"])
    probs = predict(stack, Model(card=card, network=FakeConvNet(2, 3).eval()), device="cpu")
    assert len(seen) == 1  # building the graph
    write_prediction(probs, card, tmp_path, "scene")
    assert len(seen) == 2  # computing and writing it
    assert gc.get_freeze_count() == 0


def test_a_failing_prediction_ends_its_scope(tmp_path):
    card = make_card(classes=3, tile_size=64, halo=8)

    class Exploding(FakeConvNet):
        def forward(self, x):
            raise RuntimeError("worker died")

    stack = make_stack(random_scene((130, 100)), ["red", "nir"])
    probs = predict(stack, Model(card=card, network=Exploding(2, 3).eval()), device="cpu")
    with pytest.raises(RuntimeError, match="worker died"):
        write_prediction(probs, card, tmp_path, "scene")
    assert gc.get_freeze_count() == 0
