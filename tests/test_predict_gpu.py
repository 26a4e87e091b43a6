"""The GPU path: CUDA, mixed precision, batching. Skipped where there is no CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import geoseg
from geoseg.models import save
from geoseg.inference import Runner, pick_device, predict
from tests.test_predict_real import seeded_unet

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REPO = Path(__file__).resolve().parent.parent


def test_auto_device_picks_cuda():
    assert pick_device(None) == "cuda"


def test_cuda_amp_batched_matches_cpu(tmp_path):
    model = seeded_unet(["blue", "green", "red", "nir", "swir16", "swir22"])
    card_path = save(model.network, model.card, tmp_path)  # predict from a path: loaded once per worker, on the GPU
    items = geoseg.search(REPO / "catalogs" / "demo", datetime="2016")
    stack = geoseg.load(items[0], list(model.card.bands), resolution=10).compute()
    cpu = predict(stack, card_path, device="cpu").values
    gpu = predict(stack, card_path, device="cuda", batch_size=32).values
    valid = np.isfinite(cpu).all(axis=0)
    assert np.array_equal(valid, np.isfinite(gpu).all(axis=0))
    agree = (cpu.argmax(0) == gpu.argmax(0))[valid].mean()
    print(f"\nGPU (autocast) vs CPU fp32 argmax agreement: {agree:.4%}; max |dp| {np.nanmax(np.abs(cpu - gpu)):.4f}")
    assert agree > 0.99


def test_runner_uses_autocast_on_cuda():
    model = seeded_unet(["red", "nir"])
    runner = Runner(card=model.card, device="cuda", batch_size=8, model=model)
    x = np.random.default_rng(0).normal(size=(20, 2, 128, 128)).astype("float32")
    p = runner(x)
    assert p.shape == (20, 3, 128, 128) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-3)
    assert next(model.network.parameters()).device.type == "cuda"


def test_batches_and_probabilities_are_page_locked_on_cuda():
    """On CUDA tiles go in and probabilities come out through page-locked memory (several times
    faster over the bus than pageable); the probabilities are those of a pageable batch."""
    model = seeded_unet(["red", "nir"])
    runner = Runner(card=model.card, device="cuda", batch_size=4, model=model)
    batch = runner.empty((6, 2, 128, 128))
    batch[:] = np.random.default_rng(1).normal(size=batch.shape)
    assert torch.from_numpy(batch).is_pinned()
    p = runner(batch)
    assert torch.from_numpy(p).is_pinned() and p.shape == (6, 3, 128, 128)
    np.testing.assert_allclose(p, runner(np.array(batch)), atol=1e-6)
    assert not torch.from_numpy(Runner(card=model.card, device="cpu", batch_size=4, model=model).empty((1, 2, 8, 8))).is_pinned()


def test_in_memory_model_moved_to_the_gpu_by_concurrent_first_forwards():
    """An in-memory model on the CPU, predicted on CUDA from many scheduler threads at once: moved
    once, before any forward runs on it (a move racing with forwards crashed the process)."""
    import dask

    from tests.helpers import make_stack

    model = seeded_unet(["red", "nir"])
    assert next(model.network.parameters()).device.type == "cpu"
    stack = make_stack(np.random.default_rng(2).uniform(0, 0.4, size=(2, 700, 900)), ["red", "nir"], chunks=256)
    with dask.config.set(scheduler="threads", num_workers=16):
        for _ in range(3):
            p = predict(stack, model, device="cuda", batch_size=2).values
    assert next(model.network.parameters()).device.type == "cuda"
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=0), 1, atol=1e-3)
