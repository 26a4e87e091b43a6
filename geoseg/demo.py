"""The README's main job, end to end on the embedded demo catalog.

Starts the loopback STAC API and file server over ``catalogs/demo``, searches
it by region, dates and cloud cover, loads five bands of every matching scene
through HTTP onto a 10 m UTM grid, and writes an RGB quick-look COG and PNG per
scene. Later stages (predict, stitch, vectorize, change) extend this job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geoseg.catalog import make_query, search
from geoseg.fetch import load
from geoseg.quicklook import write_quicklook
from geoseg.serve import LoopbackServers

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DemoConfig:
    """What the demo does; the defaults are the README's demo."""

    catalog: Path = REPO / "catalogs" / "demo"
    out: Path = REPO / "out" / "demo"
    region: str = "2.30,48.80,2.36,48.85"  # central Paris (OSCD "paris" scene)
    datetime: str = "2016-01-01/2017-12-31"
    max_cloud_cover: float = 20.0
    bands: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16")
    resolution: float = 10.0


def run(config: DemoConfig = DemoConfig(), *, echo=print) -> list[Path]:
    """Run the demo; returns the files written."""
    written: list[Path] = []
    with LoopbackServers(config.catalog) as srv:
        echo(f"STAC API   {srv.stac_url}  (rustac, in-memory backend)")
        echo(f"COG server {srv.files_url}  (HTTP Range requests)")
        query = make_query(region=config.region, datetime=config.datetime, max_cloud_cover=config.max_cloud_cover)
        items = search(srv.stac_url, query)
        echo(f"search {query.describe()}: {len(items)} item(s)")
        for item in items:
            stack = load(item, config.bands, region=config.region, resolution=config.resolution)
            gb = stack.odc.geobox
            echo(f"  {item.id}  {item.datetime:%Y-%m-%d}  cloud {item.properties.get('eo:cloud_cover', float('nan')):.1f}%  "
                 f"-> {stack.sizes['band']} bands x {gb.shape.y} x {gb.shape.x} px, EPSG:{gb.crs.epsg}, {config.resolution:g} m")
            cog, png = write_quicklook(stack, config.out / f"{item.id}_rgb.tif", config.out / f"{item.id}_rgb.png", overwrite=True)
            written += [cog, png]
    for path in written:
        echo(f"wrote {path}")
    return written
