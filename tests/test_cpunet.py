"""CPU inference networks (geoseg.cpunet): batch norm folded, the card's memory layout,
the same function as the network the card describes."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from geoseg.cpunet import LAYOUTS, fastest_layout, fold_batchnorm, for_cpu, pick_layout
from geoseg.inference import Runner
from geoseg.models import Model, ModelError, build_network, read_card
from geoseg.train_config import InferenceConfig
from tests.helpers import make_card


def trained_like(seed: int = 0) -> torch.nn.Module:
    """A real smp Unet/MobileNetV2 in eval mode whose batch norms hold non-trivial statistics."""
    torch.manual_seed(seed)
    net = build_network(make_card(tile_size=64, halo=8, encoder="mobilenet_v2"))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def batchnorms(net) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_folding_removes_the_batch_norms_and_keeps_the_function():
    net = trained_like()
    x = torch.randn(2, 2, 64, 64)
    with torch.inference_mode():
        want = net(x)
    folded = for_cpu(net)
    assert batchnorms(net) > 0 and batchnorms(folded) == 0  # MobileNetV2 and the Unet decoder: all in conv-norm blocks
    with torch.inference_mode():
        np.testing.assert_allclose(folded(x).numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(net(x).numpy(), want.numpy())  # the network itself is left as it was


def test_made_inside_inference_mode_too():
    net = trained_like()
    x = torch.randn(1, 2, 64, 64)
    with torch.inference_mode():
        cl = for_cpu(net, "channels_last")  # a caller already in inference mode
        np.testing.assert_allclose(cl(x.contiguous(memory_format=torch.channels_last)).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-4)
    assert not any(p.is_inference() for p in cl.parameters())


def test_norms_in_training_mode_are_not_folded():
    net = trained_like().train()
    assert batchnorms(fold_batchnorm(net)) == batchnorms(trained_like())


def test_channels_last_layout():
    net = trained_like()
    cl = for_cpu(net, "channels_last")
    conv = next(m for m in cl.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x = torch.randn(1, 2, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(cl(x.contiguous(memory_format=torch.channels_last)).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="channels_first"):
        for_cpu(net, "channels_first")


def test_one_copy_per_network_made_again_when_its_weights_change():
    net = trained_like()
    first = for_cpu(net, "channels_last")
    assert for_cpu(net, "channels_last") is first
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        next(net.parameters()).mul_(1.5)  # a fine-tuning step
    again = for_cpu(net, "channels_last")
    assert again is not first
    with torch.inference_mode():
        np.testing.assert_allclose(again(x).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-4)


def test_a_network_without_norms_or_one_that_cannot_be_copied_runs_as_it_is():
    plain = torch.nn.Conv2d(2, 2, 3, padding=1).eval()
    assert for_cpu(plain) is plain

    class Locked(torch.nn.Sequential):
        def __init__(self):
            super().__init__(torch.nn.Conv2d(2, 2, 3), torch.nn.BatchNorm2d(2))
            self.lock = threading.Lock()

    locked = Locked().eval()
    assert for_cpu(locked) is locked


def test_runner_on_a_channels_last_card_gives_the_same_probabilities():
    net = trained_like()
    card = make_card(tile_size=64, halo=8)
    tiles = np.random.default_rng(0).standard_normal((3, 2, 64, 64)).astype("float32")
    out = {}
    for layout in ("contiguous", "channels_last"):
        c = card.model_copy(update={"cpu_memory_format": layout})
        runner = Runner(card=c, device="cpu", batch_size=2, model=Model(card=c, network=net))
        out[layout] = runner(tiles)
        used = runner.network()  # what the runner ran: folded, in the card's layout
        conv = next(m for m in used.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        assert batchnorms(used) == 0
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    with torch.inference_mode():
        eager = torch.softmax(net(torch.from_numpy(tiles)), dim=1).numpy()
    assert out["channels_last"].flags.c_contiguous
    np.testing.assert_allclose(out["contiguous"], eager, atol=1e-5)
    np.testing.assert_allclose(out["channels_last"], eager, atol=1e-5)


def test_a_card_with_an_unknown_layout_is_refused_by_name(tmp_path):
    data = make_card(tile_size=64, halo=8).model_dump(mode="json")
    (tmp_path / "card.json").write_text(json.dumps({**data, "cpu_memory_format": "nhwc"}))
    with pytest.raises(ModelError, match="cpu_memory_format"):
        read_card(tmp_path / "card.json")


def test_channels_last_is_picked_only_when_clearly_faster():
    assert pick_layout({"contiguous": 1.0, "channels_last": 0.7}) == "channels_last"
    assert pick_layout({"contiguous": 1.0, "channels_last": 0.97}) == "contiguous"  # a tie keeps the default
    assert pick_layout({"contiguous": 1.0, "channels_last": 1.3}) == "contiguous"


def test_fastest_layout_times_both_and_leaves_the_thread_setting():
    before = torch.get_num_threads()
    layout, seconds = fastest_layout(trained_like(), 2, 64, repeats=1)
    assert layout in LAYOUTS and set(seconds) == set(LAYOUTS) and all(s > 0 for s in seconds.values())
    assert layout == pick_layout(seconds)
    assert torch.get_num_threads() == before


def test_training_config_layout_values():
    assert InferenceConfig().cpu_memory_format == "auto"
    with pytest.raises(ValueError, match="cpu_memory_format"):
        InferenceConfig.model_validate({"cpu_memory_format": "nhwc"})
