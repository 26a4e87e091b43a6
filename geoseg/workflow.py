"""Workflow files: one validated YAML per batch job.

The YAML is parsed once, at the edge, into pydantic models that reject
unknown keys; errors name the key, the YAML line and the fix. :func:`resolve`
then turns it into a :class:`Plan`-ready :class:`Job`: absolute dates
(relative windows such as "the last 30 days" are resolved against the run
time), a region geometry, absolute paths. Nothing below this module sees
pydantic or YAML.

Minimal example (see ``workflows/`` for complete ones)::

    name: paris-water
    region: {bbox: [2.315, 48.805, 2.350, 48.840]}
    catalog: {url: https://earth-search.aws.element84.com/v1, collections: [sentinel-2-c1-l2a], max_cloud_cover: 20}
    dates: {start: 2024-06-01, end: 2024-06-30}
    models: {segment: models/s2-water.json}
    output: out/paris-water
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geoseg.errors import InputError


class WorkflowError(InputError):
    """A workflow file that cannot be run as written (exit code 2)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BBoxRegion(_Model):
    bbox: tuple[float, float, float, float] = Field(description="minx, miny, maxx, maxy in degrees (EPSG:4326).")


class FileRegion(_Model):
    path: str = Field(description="GeoJSON, GeoPackage or other vector file (relative to the workflow file).")
    layer: Optional[str] = Field(None, description="Layer name for multi-layer files (GeoPackage).")


class Catalog(_Model):
    url: Optional[str] = Field(None, description="STAC API root URL, or path/URL of a static catalog.json.")
    serve: Optional[str] = Field(None, description="Static catalog directory to serve on loopback for this run (STAC API + COG server); the demo uses it.")
    collections: tuple[str, ...] = Field((), description="Collection ids to search.")
    max_cloud_cover: Optional[float] = Field(None, ge=0, le=100, description="Largest eo:cloud_cover, percent.")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.url is None) == (self.serve is None):
            raise ValueError("give exactly one of catalog.url (a STAC API or catalog.json) or catalog.serve (a static catalog to serve)")
        return self


_RELATIVE = re.compile(r"^(\d+) ?(d|day|days|w|week|weeks)$")


class Window(_Model):
    """A date window: absolute (start/end) or relative to the run time (last)."""

    start: Optional[dt.date] = Field(None, description="First day, inclusive.")
    end: Optional[dt.date] = Field(None, description="Last day, inclusive.")
    last: Optional[str] = Field(None, description="Relative window ending at the run time: '30 days', '2 weeks'.")

    @model_validator(mode="after")
    def _shape(self):
        if self.last is not None:
            if self.start or self.end:
                raise ValueError("give either 'last' or start/end, not both")
            if not _RELATIVE.match(self.last.strip()):
                raise ValueError(f"'last: {self.last}' is not understood; write e.g. 'last: 30 days' or 'last: 2 weeks'")
        elif self.start is None or self.end is None:
            raise ValueError("give start and end dates (YYYY-MM-DD), or 'last: 30 days'")
        elif self.start > self.end:
            raise ValueError(f"dates are inverted: start {self.start} is after end {self.end}")
        return self

    def resolve(self, now: dt.datetime) -> str:
        """The window as an absolute ``START/END`` interval."""
        if self.last is not None:
            n, unit = _RELATIVE.match(self.last.strip()).groups()
            days = int(n) * (7 if unit.startswith("w") else 1)
            start = (now - dt.timedelta(days=days)).date()
            return f"{start.isoformat()}/{now.date().isoformat()}"
        return f"{self.start.isoformat()}/{self.end.isoformat()}"


class ChangeSpec(_Model):
    before: Window = Field(description="Date window of the earlier scene.")
    after: Window = Field(description="Date window of the later scene.")


class Models(_Model):
    segment: Optional[str] = Field(None, description="Single-date model card (.json) for class maps.")
    change: Optional[str] = Field(None, description="Bi-temporal model card (.json) for model-based change.")


class Grid(_Model):
    crs: Optional[str] = Field(None, description="Output CRS, e.g. EPSG:32631 (default: the UTM zone of the region).")
    resolution: Optional[float] = Field(None, gt=0, description="Pixel size in CRS units (default: the model's).")


class Tiling(_Model):
    tile_size: Optional[int] = Field(None, gt=0, description="Override the card's tile size (a multiple of its size divisor).")
    halo: Optional[int] = Field(None, ge=0, description="Override the card's halo.")
    batch_size: Optional[int] = Field(None, gt=0, description="Tiles per forward pass.")


class Products(_Model):
    quicklook: bool = Field(True, description="RGB quick-look COG + PNG per scene.")
    class_cog: bool = Field(True, description="Class COG per scene (with colour table).")
    confidence_cog: bool = Field(True, description="Top-class probability COG per scene.")
    probabilities: bool = Field(False, description="Per-class probability COG per scene.")
    geopackage: bool = Field(True, description="Polygons per class in a GeoPackage styled for QGIS.")
    change: bool = Field(True, description="Change products when 'change' windows are given.")
    min_area_m2: float = Field(0.0, ge=0, description="Polygons smaller than this are dropped (holes filled).")
    simplify_m: float = Field(0.0, ge=0, description="Topology-preserving simplification tolerance, metres.")


class DaskSpec(_Model):
    scheduler: Optional[str] = Field(None, description="Address of an existing Dask scheduler (tcp://host:8786); else a LocalCluster.")
    workers: int = Field(2, ge=1, description="LocalCluster worker processes.")
    threads_per_worker: int = Field(1, ge=1, description="Threads per worker.")
    memory_limit: str = Field("4GiB", description="Memory limit per worker (LocalCluster).")
    gpus_per_worker: int = Field(0, ge=0, description="GPU resources each worker declares (LocalCluster: 0 on CPU machines).")


class WorkflowSpec(_Model):
    """A geoseg workflow file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Job name (used in file names).")
    region: Union[BBoxRegion, FileRegion] = Field(description="Area to process.")
    catalog: Catalog
    dates: Optional[Window] = Field(None, description="Scenes to segment (single-date products).")
    change: Optional[ChangeSpec] = Field(None, description="Before/after windows for change products.")
    models: Models
    grid: Grid = Field(default_factory=Grid)
    tiling: Tiling = Field(default_factory=Tiling)
    products: Products = Field(default_factory=Products)
    output: str = Field(description="Output directory (relative to the workflow file).")
    dask: DaskSpec = Field(default_factory=DaskSpec)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")

    @field_validator("region", mode="before")
    @classmethod
    def _region_kind(cls, v):
        if isinstance(v, dict) and "bbox" in v:
            return BBoxRegion.model_validate(v)
        if isinstance(v, dict) and "path" in v:
            return FileRegion.model_validate(v)
        raise ValueError("region needs 'bbox: [minx, miny, maxx, maxy]' or 'path: FILE' (with optional 'layer')")

    @model_validator(mode="after")
    def _something_to_do(self):
        if self.dates is None and self.change is None:
            raise ValueError("nothing to do: give 'dates' (segment scenes) and/or 'change' (before/after)")
        if self.dates is not None and self.models.segment is None:
            raise ValueError("'dates' needs models.segment (a single-date model card)")
        if self.change is not None and self.models.segment is None and self.models.change is None:
            raise ValueError("'change' needs models.segment (post-classification) and/or models.change (bi-temporal)")
        return self


# ------------------------------------------------------------------ loading

class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key."""


def _construct_mapping(loader, node, deep=False):
    mapping = {}
    lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        mapping[key] = loader.construct_object(value_node, deep=deep)
        lines[key] = key_node.start_mark.line + 1
    mapping["__lines__"] = lines
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _strip_lines(obj, path=(), table=None):
    """Remove the line bookkeeping; return (clean object, {key path: line})."""
    table = {} if table is None else table
    if isinstance(obj, dict):
        lines = obj.pop("__lines__", {})
        out = {}
        for k, v in obj.items():
            table[path + (k,)] = lines.get(k)
            out[k] = _strip_lines(v, path + (k,), table)[0]
        return out, table
    if isinstance(obj, list):
        return [_strip_lines(v, path + (i,), table)[0] for i, v in enumerate(obj)], table
    return obj, table


def _line_of(loc: tuple, lines: dict) -> int | None:
    for n in range(len(loc), 0, -1):
        key = tuple(loc[:n])
        if lines.get(key):
            return lines[key]
    return None


def parse(text: str, *, source: str = "<workflow>") -> WorkflowSpec:
    """Parse and validate workflow YAML; one clear :class:`WorkflowError` otherwise."""
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise WorkflowError(f"{source}{where}: not valid YAML ({getattr(err, 'problem', None) or err})", fix="fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise WorkflowError(f"{source}: a workflow is a YAML mapping (key: value), got {type(raw).__name__}", fix="see workflows/demo.yaml")
    data, lines = _strip_lines(raw)
    try:
        return WorkflowSpec.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in ("BBoxRegion", "FileRegion", "function-after[_one_source(), Catalog]")))
        line = _line_of(loc, lines)
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        raise WorkflowError(
            f"{source}{f' line {line}' if line else ''}: {key}: {msg}",
            fix="fix that key; `geoseg validate --help` and workflows/demo.yaml show the schema",
        ) from None
    except (TypeError, ValueError) as err:  # pydantic can raise these for odd YAML values
        raise WorkflowError(f"{source}: {err}", fix="check the values' types") from None


def read(path: str | Path) -> WorkflowSpec:
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"workflow file {str(path)!r} does not exist", fix="give the path of a workflow YAML, e.g. workflows/demo.yaml")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise WorkflowError(f"cannot read workflow file {str(path)!r}: {err}", fix="give a readable UTF-8 YAML file") from None
    return parse(text, source=str(path))


# ------------------------------------------------------------------ resolving

@dataclass(frozen=True)
class Job:
    """A workflow with everything made absolute: what the runner executes."""

    name: str
    base: Path
    region: Any  # odc.geo.geom.Geometry, EPSG:4326
    catalog_url: str | None
    serve: Path | None
    collections: tuple[str, ...]
    max_cloud_cover: float | None
    window: str | None
    before: str | None
    after: str | None
    segment_model: Path | None
    change_model: Path | None
    crs: str | None
    resolution: float | None
    tiling: Tiling
    products: Products
    output: Path
    dask: DaskSpec
    device: str
    resolved_at: str

    def as_dict(self) -> dict:
        """The workflow as resolved (absolute dates and paths), for the run manifest."""
        b = self.region.boundingbox
        return {
            "name": self.name, "region_bbox": [b.left, b.bottom, b.right, b.top],
            "catalog": self.catalog_url or f"served from {self.serve}", "collections": list(self.collections),
            "max_cloud_cover": self.max_cloud_cover, "window": self.window, "before": self.before, "after": self.after,
            "segment_model": str(self.segment_model) if self.segment_model else None,
            "change_model": str(self.change_model) if self.change_model else None,
            "crs": self.crs, "resolution": self.resolution, "tiling": self.tiling.model_dump(), "products": self.products.model_dump(),
            "output": str(self.output), "dask": self.dask.model_dump(), "device": self.device, "resolved_at": self.resolved_at,
        }


def resolve(spec: WorkflowSpec, *, base: str | Path = ".", now: dt.datetime | None = None) -> Job:
    """Make a validated spec concrete: absolute dates, paths and region; check files exist."""
    from geoseg.grid import as_crs
    from geoseg.models import read_card
    from geoseg.region import to_region

    base = Path(base).resolve()
    now = now or dt.datetime.now(dt.timezone.utc)

    def path(p: str | None, what: str) -> Path | None:
        if p is None:
            return None
        q = (base / p).resolve() if not Path(p).is_absolute() else Path(p)
        if not q.exists():
            raise WorkflowError(f"{what} {p!r} does not exist (resolved to {q})", fix=f"fix the path of {what} (relative to the workflow file)")
        return q

    r = spec.region
    region = to_region(r.bbox) if isinstance(r, BBoxRegion) else to_region(path(r.path, "region.path"), layer=r.layer)
    if spec.grid.crs:
        as_crs(spec.grid.crs)
    segment = path(spec.models.segment, "models.segment")
    change = path(spec.models.change, "models.change")
    for p, key, steps in ((segment, "models.segment", 1), (change, "models.change", 2)):
        if p is not None:
            card = read_card(p)
            if card.time_steps != steps:
                kind = "single-date" if steps == 1 else "bi-temporal"
                raise WorkflowError(f"{key}: model {card.name!r} is not {kind} (time_steps {card.time_steps})",
                                    fix=f"{key} takes a {kind} model card")
    serve = path(spec.catalog.serve, "catalog.serve")
    url = spec.catalog.url
    if url and not re.match(r"^https?://", url):
        url = str(path(url, "catalog.url"))
    return Job(
        name=spec.name, base=base, region=region, catalog_url=url, serve=serve, collections=spec.catalog.collections,
        max_cloud_cover=spec.catalog.max_cloud_cover, window=spec.dates.resolve(now) if spec.dates else None,
        before=spec.change.before.resolve(now) if spec.change else None, after=spec.change.after.resolve(now) if spec.change else None,
        segment_model=segment, change_model=change, crs=spec.grid.crs, resolution=spec.grid.resolution, tiling=spec.tiling,
        products=spec.products, output=(base / spec.output).resolve(), dask=spec.dask, device=spec.device,
        resolved_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
