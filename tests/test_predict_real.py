"""Seams with real networks on a real demo scene: tiled + stitched vs one pass.

Prints the agreement and the disagreement rates near tile borders and
elsewhere (run with -s to see them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import geoseg
from geoseg.models import Model, build_network, load
from geoseg.inference import normalize, predict
from geoseg.tiling import TileLayout
from tests.helpers import make_card

REPO = Path(__file__).resolve().parent.parent
NANTES = "-1.577,47.176,-1.512,47.234"  # the largest demo scene: several 512 px tiles


def seeded_unet(bands) -> Model:
    torch.manual_seed(0)
    card = make_card(bands, tile_size=128, halo=32, divisor=32, architecture="Unet", encoder="mobilenet_v2", classes=3,
                     value_range=(-0.5, 3.0))
    return Model(card=card, network=build_network(card).eval())


def shipped(name):
    path = REPO / "models" / f"{name}.json"
    if not path.exists():
        pytest.skip(f"shipped model {name} not built yet")
    return load(path)


def whole_image(values: np.ndarray, model: Model) -> np.ndarray:
    """One forward pass over the whole scene, padded the way tiles are.

    Tiles that hang over the scene see zero-filled (normalized) *input* beyond
    it; a plain whole-image pass would instead zero-pad every *feature map* at
    the scene edge, and a deep network answers differently in a wide band along
    the edge whatever the tiling. Padding the scene by the halo with zero input
    on every side (and up to the size divisor) makes the tiling the only
    difference between the two results.
    """
    card = model.card
    x, valid = normalize(values.reshape((-1,) + values.shape[-2:]).astype("float32"), card)
    ny, nx = x.shape[1:]
    h, d = card.halo, card.size_divisor
    x = np.pad(x, ((0, 0), (h, h + (-(ny + 2 * h)) % d), (h, h + (-(nx + 2 * h)) % d)))
    with torch.inference_mode():
        p = torch.softmax(model.network(torch.from_numpy(x)[None]), dim=1)[0].numpy()[:, h:h + ny, h:h + nx]
    p[:, ~valid] = np.nan
    return p


def border_mask(shape, layout: TileLayout, width: int = 8) -> np.ndarray:
    """Pixels within ``width`` of a tile edge that lies inside the scene."""
    ny, nx = shape
    near = np.zeros(shape, bool)
    for s in layout.y.starts:
        for e in (s, s + layout.size):
            if 0 < e < ny:
                near[max(0, e - width):e + width, :] = True
    for s in layout.x.starts:
        for e in (s, s + layout.size):
            if 0 < e < nx:
                near[:, max(0, e - width):e + width] = True
    return near


@pytest.mark.parametrize("which", ["seeded-unet", "s2-water", "oscd-urban-change"])
def test_real_network_has_no_seams(which):
    if which == "seeded-unet":
        model = seeded_unet(["blue", "green", "red", "nir", "swir16", "swir22"])
    else:
        model = shipped(which)
    card = model.card
    items = geoseg.search(REPO / "catalogs" / "demo", region=NANTES, datetime="2015/2017")
    source = items if card.time_steps == 2 else items[0]
    stack = geoseg.load(source, list(card.bands), resolution=card.resolution).compute()
    tiled = predict(stack, model, device="cpu").values
    single = whole_image(stack.values, model)

    valid = np.isfinite(single).all(axis=0)
    ny, nx = valid.shape
    layout = TileLayout(ny, nx, card.tile_size, card.halo)
    assert layout.n_tiles >= 4, "the scene must span several tiles for this test to mean anything"
    near = border_mask((ny, nx), layout)
    inner = valid  # the reference is padded like the tiles (see whole_image): the scene edges count too
    disagree = tiled.argmax(0) != single.argmax(0)
    agreement = 1 - disagree[valid].mean()
    rate_near = disagree[valid & near & inner].mean()
    rate_else = disagree[valid & ~near & inner].mean()
    print(f"\n{which}: {layout.n_tiles} tiles of {card.tile_size}px (halo {card.halo}): agreement {agreement:.4%}, "
          f"disagreement near tile borders {rate_near:.4%}, elsewhere {rate_else:.4%}")
    assert agreement >= 0.995
    floor = 1.0 / (valid & ~near & inner).sum()  # one pixel: a 0-vs-0 comparison must not fail on noise
    assert rate_near <= 2 * max(rate_else, floor)
