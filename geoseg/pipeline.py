"""Stages chained: items from a search, through a model, to products on disk.

The CLI, the demo and (later) workflows call these; notebooks may too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pystac

from geoseg.contract import ContractError
from geoseg.fetch import load
from geoseg.models import read_card
from geoseg.outputs import write_prediction
from geoseg.inference import predict
from geoseg.region import RegionLike


@dataclass(frozen=True)
class Product:
    """Products of one prediction."""

    items: tuple[str, ...]
    """STAC item ids used (two for a bi-temporal model, earlier first)."""
    paths: dict
    """'class', 'confidence' (and 'probabilities') → file path."""
    tiles: int


def _provenance(items: Sequence[pystac.Item], model_path: Path) -> dict[str, str]:
    return {
        "stac_items": ",".join(it.id for it in items),
        "datetimes": ",".join(f"{it.datetime:%Y-%m-%dT%H:%M:%SZ}" for it in items if it.datetime),
        "model_card": str(model_path.name),
    }


def segment_items(
    items: Sequence[pystac.Item],
    model: str | Path,
    out_dir: str | Path,
    *,
    region: RegionLike | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    resample: bool = False,
    probabilities: bool = False,
    overwrite: bool = False,
) -> list[Product]:
    """Run ``model`` over ``items``: each item alone for a single-date card;
    the two items as a (before, after) pair for a bi-temporal card."""
    model = Path(model)
    card = read_card(model)
    if card.time_steps == 1:
        groups = [[it] for it in items]
    else:
        if len(items) != 2:
            raise ContractError(
                f"bi-temporal model {card.name!r} needs exactly two scenes; the search found {len(items)}: "
                + ", ".join(it.id for it in items),
                fix="narrow the search (--datetime, --ids) to one scene before and one after",
            )
        groups = [sorted(items, key=lambda it: it.datetime)]
    products = []
    for group in groups:
        resolution = None if resample else card.resolution
        stack = load(group if card.time_steps == 2 else group[0], list(card.bands), region=region, resolution=resolution)
        probs = predict(stack, model, device=device, batch_size=batch_size, resample=resample)
        prefix = "__".join(it.id for it in group) + f"_{card.name}"
        paths = write_prediction(probs, card, out_dir, prefix, probabilities=probabilities,
                                 provenance=_provenance(group, model), overwrite=overwrite)
        products.append(Product(items=tuple(it.id for it in group), paths=paths, tiles=probs.attrs["tiles"]))
    return products
