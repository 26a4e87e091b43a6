"""CPU inference: one forward per scheduler thread, each with its share of torch's threads.

A fake network records, inside its forward, how many torch threads it runs with;
a barrier inside it proves two forwards run at once.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import dask
import numpy as np
import pytest
import torch

from geoseg.inference import Runner, _CPU
from geoseg.models import Model
from tests.helpers import make_card


class Probe(torch.nn.Module):
    """Network that records torch's thread count in its forward (and may wait there for another)."""

    def __init__(self, classes: int, wait: threading.Barrier | None = None):
        super().__init__()
        self.classes, self.wait = classes, wait
        self.seen: list[int] = []

    def forward(self, x):
        if self.wait is not None:
            self.wait.wait(timeout=20)  # both forwards inside at once, or BrokenBarrierError
        self.seen.append(torch.get_num_threads())
        return torch.zeros((x.shape[0], self.classes) + tuple(x.shape[2:]))


def runner(net: Probe) -> Runner:
    card = make_card(tile_size=32, halo=8)
    return Runner(card=card, device="cpu", batch_size=2, model=Model(card=card, network=net))


def test_cpu_forwards_of_two_scheduler_threads_run_at_once_with_one_torch_thread_each():
    net = Probe(2, wait=threading.Barrier(2))
    run = runner(net)
    tiles = np.zeros((2, 2, 32, 32), "float32")
    before = torch.get_num_threads()
    with dask.config.set(num_workers=2), ThreadPoolExecutor(2) as pool:
        list(pool.map(run, [tiles, tiles]))  # the barrier breaks if forwards were serialized
    assert net.seen == [max(1, _CPU.budget() // 2)] * 2
    assert torch.get_num_threads() == before  # the caller's thread keeps its setting


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two torch threads to share")
def test_the_main_thread_and_a_one_thread_pool_keep_every_torch_thread():
    net = Probe(2)
    run = runner(net)
    tiles = np.zeros((1, 2, 32, 32), "float32")
    run(tiles)  # the synchronous scheduler runs tasks here, on the main thread
    with dask.config.set(num_workers=1), ThreadPoolExecutor(1) as pool:
        pool.submit(run, tiles).result()
    assert net.seen == [_CPU.budget(), _CPU.budget()]


def test_pool_threads_give_the_budget_back_after_each_batch():
    run = runner(Probe(2))
    tiles = np.zeros((3, 2, 32, 32), "float32")

    def call_then_count():
        run(tiles)
        return torch.get_num_threads()

    with dask.config.set(num_workers=4), ThreadPoolExecutor(1) as pool:
        assert pool.submit(call_then_count).result() == _CPU.budget()


def test_a_model_is_moved_once_while_forwards_start_together():
    """The first forwards of an in-memory model start together on every scheduler thread: one
    moves it to the runner's device, and none goes on before the move is complete (a thread that
    saw the first parameter moved while the rest were still moving crashed the process on CUDA)."""
    from geoseg.inference import _moved

    class Param:
        device = torch.device("meta")

    class Net:
        def __init__(self):
            self.params, self.moves = [Param() for _ in range(4)], 0

        def parameters(self):
            return iter(self.params)

        def to(self, device):
            self.moves += 1
            for p in self.params:
                threading.Event().wait(0.005)
                p.device = device

    net, start = Net(), threading.Barrier(8)

    def first_forward(_):
        start.wait()
        return all(p.device == torch.device("cpu") for p in _moved(net, "cpu").params)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(first_forward, range(8)))
    assert net.moves == 1
