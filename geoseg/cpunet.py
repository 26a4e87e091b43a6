"""Networks as CPU inference runs them: batch norm folded, the card's memory layout.

:func:`for_cpu` gives, once per network, an inference copy of it:

* every ``BatchNorm2d`` that directly follows a ``Conv2d`` in a
  ``Sequential`` (torchvision's and smp's conv-norm-activation blocks) is
  folded into the convolution's weights and bias: one op instead of two, the
  same function up to float rounding;
* with a card whose ``cpu_memory_format`` is ``channels_last``, the weights
  (and each batch, see :class:`geoseg.inference.Runner`) are laid out
  channels-last, where oneDNN's convolutions are faster for many encoders.

Measured on 2 cores (ad hoc, 2 streams of one torch thread each, random
weights, 8 tiles of 512²; eager / folded / folded + channels_last):
Unet/MobileNetV2 1.46 / 1.34 / 0.94 s, Unet/ResNet18 1.77 / 1.71 / 1.34 s,
UnetPlusPlus/ResNet18 (256²) 1.21 / 1.23 / 0.97 s, DeepLabV3Plus/ResNet34
1.91 / 1.94 / 1.81 s; but Segformer/MiT-B0 1.92 / 1.91 / 2.42 s and
FPN/EfficientNet-B0 1.17 / 1.15 / 1.31 s ran slower channels-last. So the
layout is the card's to declare, measured, never guessed at run time, and
results stay reproducible: the same card runs the same kernels. ``geoseg
train`` measures it (:func:`fastest_layout`) unless its config says which.

The GPU path is left as it is: none of this was measured on a GPU.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from typing import Literal, get_args

#: card.cpu_memory_format values (the card and the training config validate against this type)
Layout = Literal["contiguous", "channels_last"]
LAYOUTS: tuple[str, ...] = get_args(Layout)

_lock = threading.Lock()
_copies: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _pairs(module):
    """(sequential, conv name, norm name) for each eval-mode conv + batch norm pair that can be folded."""
    import torch

    for seq in module.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = seq._modules[a], seq._modules[b]
            if (type(conv) is torch.nn.Conv2d and type(norm) is torch.nn.BatchNorm2d and not conv.training
                    and not norm.training and norm.track_running_stats and norm.running_mean is not None):
                yield seq, a, b


def fold_batchnorm(module):
    """Fold each eval-mode ``BatchNorm2d`` that follows a ``Conv2d`` in a ``Sequential`` into it, in place.

    The norm becomes an ``Identity``; norms elsewhere (or in training mode,
    or without running statistics) are left alone. Returns ``module``.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq, a, b in list(_pairs(module)):
        seq._modules[a] = fuse_conv_bn_eval(seq._modules[a], seq._modules[b])
        seq._modules[b] = torch.nn.Identity()
    return module


def for_cpu(network, layout: str = "contiguous"):
    """The inference copy of ``network`` for the CPU, kept while ``network`` lives and made
    again if its weights change (a network fine-tuned between two predictions).

    ``network`` itself when there is nothing to change (no batch norm to fold,
    contiguous layout) or it cannot be copied.
    """
    import torch

    if layout not in LAYOUTS:
        raise ValueError(f"unknown memory layout {layout!r}; use one of {LAYOUTS}")
    if layout == "contiguous" and next(_pairs(network), None) is None:
        return network
    # every in-place change of a tensor (an optimizer step, load_state_dict) bumps its version
    state = tuple(t._version for t in (*network.parameters(), *network.buffers()))
    with _lock:
        made = _copies.setdefault(network, {})
        if layout not in made or made[layout][0] != state:
            with torch.inference_mode(False):  # plain tensors, even if the caller runs in inference mode
                try:
                    net = copy.deepcopy(network)
                except (TypeError, RuntimeError):  # state that cannot be copied (a lock, a handle): run it as it is
                    return network
                net = fold_batchnorm(net)
                if layout == "channels_last":
                    net = net.to(memory_format=torch.channels_last)
            made[layout] = (state, net)
        return made[layout][1]


def as_layout(batch, layout: str):
    """A batch tensor laid out as a network made by ``for_cpu(..., layout)`` runs fastest."""
    import torch

    return batch.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else batch


def pick_layout(seconds: dict[str, float], margin: float = 0.05) -> str:
    """``channels_last`` when it ran at least ``margin`` faster, else the default (near a tie, no change)."""
    return "channels_last" if seconds["channels_last"] < (1 - margin) * seconds["contiguous"] else "contiguous"


def fastest_layout(network, channels: int, tile: int, *, repeats: int = 3) -> tuple[str, dict[str, float]]:
    """Which layout runs ``network`` faster on one ``tile``² tile of ``channels``, as CPU
    inference runs it (one torch thread, folded); and each layout's best of ``repeats`` seconds."""
    import torch

    net = copy.deepcopy(network).cpu().eval()
    runs = {layout: for_cpu(net, layout) for layout in LAYOUTS}
    x = torch.randn(1, channels, tile, tile, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    seconds = {}
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for layout, run in runs.items():
                xi = as_layout(x, layout)
                run(xi)  # warm-up: oneDNN picks and caches its kernels
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run(xi)
                    best = min(best, time.perf_counter() - t0)
                seconds[layout] = round(best, 4)
    finally:
        torch.set_num_threads(threads)
    return pick_layout(seconds), seconds
