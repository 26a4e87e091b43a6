"""`geoseg validate` and `geoseg plan`: checking a job and sizing it without running it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

from geoseg.bands import resolve_bands
from geoseg.catalog import make_query, search
from geoseg.grid import target_geobox
from geoseg.models import read_card
from geoseg.tiling import TileLayout
from geoseg.workflow import Job


@contextlib.contextmanager
def catalog_url(job: Job) -> Iterator[str]:
    """The job's catalog URL, serving a static catalog on loopback when asked."""
    if job.serve is None:
        yield job.catalog_url
        return
    from geoseg.serve import LoopbackServers

    with LoopbackServers(job.serve) as srv:
        yield srv.stac_url


def check_tiling(card, tiling) -> None:
    """The workflow's tiling overrides must make a valid card."""
    from pydantic import ValidationError

    from geoseg.models import ModelCard
    from geoseg.workflow import WorkflowError

    update = {k: v for k, v in (("tile_size", tiling.tile_size), ("halo", tiling.halo)) if v is not None}
    if not update:
        return
    try:
        ModelCard.model_validate({**card.model_dump(), **update})
    except ValidationError as err:
        raise WorkflowError(f"tiling: {err.errors()[0]['msg'].removeprefix('Value error, ')} (model {card.name!r})",
                            fix="choose a tile_size that is a multiple of the model's size_divisor and more than 2 * halo") from None


@dataclass(frozen=True)
class PlanLine:
    what: str
    items: tuple[str, ...]
    shape: tuple[int, int]
    tiles: int


def plan(job: Job, url: str) -> list[PlanLine]:
    """Scenes found and the tiles each product needs (no pixels are read)."""
    lines: list[PlanLine] = []
    models = {}
    for path in (job.segment_model, job.change_model):
        if path is not None:
            models[path] = read_card(path)

    def grid_tiles(card) -> tuple[tuple[int, int], int]:
        gbox = target_geobox(job.region, crs=job.crs, resolution=job.resolution or card.resolution)
        t = job.tiling
        check_tiling(card, t)
        layout = TileLayout(gbox.shape.y, gbox.shape.x, t.tile_size or card.tile_size, t.halo if t.halo is not None else card.halo)
        return (gbox.shape.y, gbox.shape.x), layout.n_tiles

    if job.window:
        items = search(url, make_query(collections=job.collections, region=job.region, datetime=job.window, max_cloud_cover=job.max_cloud_cover))
        card = models[job.segment_model]
        for it in items:
            resolve_bands(it, list(card.bands))  # the bands exist
        days: dict = {}
        for it in items:
            days.setdefault(it.datetime.date(), []).append(it.id)
        for day, ids in sorted(days.items()):
            shape, tiles = grid_tiles(card)
            lines.append(PlanLine(f"segment {day} with {card.name}", tuple(ids), shape, tiles))
    if job.before:
        from geoseg.compare import pair_scenes

        pair = pair_scenes(url, job.region, job.before, job.after, collections=job.collections, max_cloud_cover=job.max_cloud_cover)
        for path in (job.segment_model, job.change_model):
            if path is None:
                continue
            card = models[path]
            for it in pair.before + pair.after:
                resolve_bands(it, list(card.bands))
            shape, tiles = grid_tiles(card)
            kind = "post-classification change" if card.time_steps == 1 else "model-based change"
            n = 2 * tiles if card.time_steps == 1 else tiles
            lines.append(PlanLine(f"{kind} {pair.dates[0]} -> {pair.dates[1]} with {card.name}",
                                  tuple(it.id for it in pair.before + pair.after), shape, n))
    return lines


def validate(job: Job, echo: Callable[[str], None] = print) -> list[PlanLine]:
    """Everything `geoseg run` would check first: files, catalog, scenes, bands."""
    with catalog_url(job) as url:
        lines = plan(job, url)
    echo(f"workflow {job.name!r} is valid: {len(lines)} product(s), {sum(l.tiles for l in lines)} tiles")
    return lines
