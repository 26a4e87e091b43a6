"""The ``geoseg`` command line.

Every geoseg error is printed as one clear message (what was wrong, how to fix
it) with no traceback, and the process exits with a code a scheduler can act
on: 0 done, 1 failure, 2 bad input or configuration, 3 no data for the request.
Set ``GEOSEG_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from geoseg import envvars
from geoseg.errors import GeosegError

app = typer.Typer(
    name="geoseg",
    help="Segment multispectral satellite imagery over whole regions: STAC search, band-aware loading, "
    "tiled inference, COGs and GeoPackages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

SOURCE_HELP = "STAC API root URL, or path/URL of a static catalog.json / collection.json."
REGION_HELP = "Area: 'minx,miny,maxx,maxy' in degrees, or a GeoJSON / GeoPackage path."
DATETIME_HELP = "Date or interval: 2017, 2017-06, 2017-06-01, 2016-01-01/2017-12-31, ../2017-06."


def _err(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def search(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    region: Optional[str] = typer.Option(None, "--region", "--bbox", "-r", help=REGION_HELP),
    datetime: Optional[str] = typer.Option(None, "--datetime", "-d", help=DATETIME_HELP),
    collections: Optional[str] = typer.Option(None, "--collections", "-c", help="Comma-separated collection ids."),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="Largest eo:cloud_cover, percent."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Most items to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the items as a GeoJSON FeatureCollection."),
) -> None:
    """List the items matching a search: id, datetime, cloud cover, bands."""
    import json

    from geoseg.bands import resolve_band
    from geoseg.catalog import make_query, search as run_search

    query = make_query(collections=collections or (), region=region, datetime=datetime, max_cloud_cover=max_cloud, limit=limit)
    items = run_search(source, query)
    if as_json:
        typer.echo(json.dumps({"type": "FeatureCollection", "features": [it.to_dict() for it in items]}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(items)} item(s) in {source}", title_justify="left")
    for col in ("id", "datetime", "cloud %", "epsg", "bands (common names)"):
        table.add_column(col, overflow="fold")
    for it in items:
        names = []
        for key in it.assets:
            try:
                b = resolve_band(it, key)
            except GeosegError:
                continue
            if b.common_name or b.band_name:
                names.append(b.common_name or key)
        cc = it.properties.get("eo:cloud_cover")
        table.add_row(
            it.id,
            f"{it.datetime:%Y-%m-%d %H:%M}" if it.datetime else "-",
            "-" if cc is None else f"{cc:.1f}",
            str(it.properties.get("proj:epsg") or it.properties.get("proj:code") or "-"),
            " ".join(names),
        )
    Console(width=160).print(table)


@app.command()
def load(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out_dir: Path = typer.Argument(..., help="Directory for one float32 reflectance COG per item."),
    bands: str = typer.Option("blue,green,red,nir", "--bands", "-b", help="Comma-separated band names (common name, band name or asset key)."),
    region: Optional[str] = typer.Option(None, "--region", "--bbox", "-r", help=REGION_HELP),
    datetime: Optional[str] = typer.Option(None, "--datetime", "-d", help=DATETIME_HELP),
    collections: Optional[str] = typer.Option(None, "--collections", "-c", help="Comma-separated collection ids."),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="Largest eo:cloud_cover, percent."),
    crs: Optional[str] = typer.Option(None, "--crs", help="Target CRS (default: UTM zone of the region)."),
    resolution: Optional[float] = typer.Option(None, "--resolution", help="Pixel size in CRS units (default: finest band)."),
    quicklook: bool = typer.Option(True, help="Also write an RGB quick-look COG and PNG when red, green, blue are loaded."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Search, then load bands of each item onto one grid and write them as COGs."""
    from geoseg.catalog import make_query, search as run_search
    from geoseg.io import write_cog
    from geoseg.fetch import load as run_load
    from geoseg.quicklook import write_quicklook

    names = [b.strip() for b in bands.split(",") if b.strip()]
    items = run_search(source, make_query(collections=collections or (), region=region, datetime=datetime, max_cloud_cover=max_cloud))
    for item in items:
        stack = run_load(item, names, region=region, crs=crs, resolution=resolution)
        path = write_cog(stack, out_dir / f"{item.id}.tif", stack.odc.geobox, dtype="float32", nodata=float("nan"),
                         descriptions=names, overwrite=overwrite)
        typer.echo(f"wrote {path}  ({len(names)} bands, {stack.sizes['y']} x {stack.sizes['x']} px)")
        if quicklook and {"red", "green", "blue"} <= set(names):
            cog, png = write_quicklook(stack, out_dir / f"{item.id}_rgb.tif", out_dir / f"{item.id}_rgb.png", overwrite=overwrite)
            typer.echo(f"wrote {cog}\nwrote {png}")


@app.command()
def predict(
    model: Path = typer.Argument(..., help="Model card (.json) with its .safetensors beside it."),
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out_dir: Path = typer.Argument(..., help="Directory for the class and confidence COGs."),
    region: Optional[str] = typer.Option(None, "--region", "--bbox", "-r", help=REGION_HELP),
    datetime: Optional[str] = typer.Option(None, "--datetime", "-d", help=DATETIME_HELP),
    collections: Optional[str] = typer.Option(None, "--collections", "-c", help="Comma-separated collection ids."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated item ids."),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="Largest eo:cloud_cover, percent."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Tiles per forward pass (default 16 on GPU; on CPU 2 tiles of 256 px, 1 of 512)."),
    resample: bool = typer.Option(False, "--resample", help="Resample stacks whose resolution differs from the model's instead of refusing them."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write per-class probabilities."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Search, then run a model over each scene (or the before/after pair for a change model), writing class and confidence COGs."""
    from geoseg.catalog import make_query, search as run_search
    from geoseg.models import read_card
    from geoseg.pipeline import segment_items

    card = read_card(model)  # a bad card fails before any search
    items = run_search(source, make_query(collections=collections or (), ids=ids or (), region=region, datetime=datetime, max_cloud_cover=max_cloud))
    typer.echo(f"model {card.name} {card.version}: {card.architecture}/{card.encoder}, bands {', '.join(card.bands)}; {len(items)} scene(s)")
    for product in segment_items(items, model, out_dir, region=region, device=device, batch_size=batch_size,
                                 resample=resample, probabilities=probabilities, overwrite=overwrite):
        typer.echo(f"{' + '.join(product.items)}: {product.tiles} tiles")
        for path in product.paths.values():
            typer.echo(f"  wrote {path}")


def _job(workflow: Path):
    from geoseg.workflow import read, resolve

    return resolve(read(workflow), base=workflow.resolve().parent)


@app.command()
def validate(workflow: Path = typer.Argument(..., help="Workflow YAML (see workflows/).")) -> None:
    """Check a workflow without running it: schema, files, model cards, catalog, scenes and bands."""
    from geoseg.workflow_checks import validate as run_validate

    run_validate(_job(workflow), echo=typer.echo)


@app.command()
def plan(workflow: Path = typer.Argument(..., help="Workflow YAML (see workflows/).")) -> None:
    """Dry run: the scenes a workflow would process and the tiles each product needs."""
    from geoseg.workflow_checks import catalog_url, plan as run_plan

    job = _job(workflow)
    with catalog_url(job) as url:
        lines = run_plan(job, url)
    typer.echo(f"workflow {job.name}: output {job.output}")
    for line in lines:
        typer.echo(f"  {line.what}: {', '.join(line.items)}; grid {line.shape[0]} x {line.shape[1]} px, {line.tiles} tiles")
    typer.echo(f"total: {sum(l.tiles for l in lines)} tiles")


@app.command()
def run(
    workflow: Path = typer.Argument(..., help="Workflow YAML (see workflows/)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Existing Dask scheduler address (else DASK_SCHEDULER_ADDRESS, else the workflow's, else a local cluster)."),
) -> None:
    """Run a workflow on Dask; rerunning after a crash recomputes only what is missing.

    Exit codes: 0 done, 1 failure, 2 bad workflow or input, 3 no data for the dates/region.
    """
    from geoseg.runner import run as run_job

    run_job(_job(workflow), scheduler=scheduler, echo=typer.echo)


@app.command("change")
def change_cmd(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out_dir: Path = typer.Argument(..., help="Output directory (COGs, CSV, GeoPackage, run.json)."),
    region: str = typer.Option(..., "--region", "--bbox", "-r", help=REGION_HELP),
    before: str = typer.Option(..., "--before", help="Date window of the earlier scene, e.g. 2016 or 2016-03-01/2016-06-30."),
    after: str = typer.Option(..., "--after", help="Date window of the later scene."),
    model: Optional[Path] = typer.Option(None, "--model", help="Single-date model card: post-classification transitions."),
    change_model: Optional[Path] = typer.Option(None, "--change-model", help="Bi-temporal model card: model-based change."),
    collections: Optional[str] = typer.Option(None, "--collections", "-c", help="Comma-separated collection ids."),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="Largest eo:cloud_cover, percent."),
    min_area: float = typer.Option(0.0, "--min-area", help="Drop change polygons smaller than this (m2)."),
    simplify: float = typer.Option(0.0, "--simplify", help="Topology-preserving simplification tolerance (m)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    workers: int = typer.Option(2, "--workers", help="Local Dask worker processes."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Existing Dask scheduler address."),
) -> None:
    """Compare two dates over a region: class transitions (--model), model-based change (--change-model), area tables and polygons."""
    from geoseg.catalog import parse_interval
    from geoseg.compare import ChangeError, _check_kind
    from geoseg.models import read_card
    from geoseg.region import to_region
    from geoseg.runner import run as run_job
    from geoseg.workflow import WorkflowSpec, resolve

    if model is None and change_model is None:
        raise ChangeError("nothing to compare with", fix="give --model (single-date card) and/or --change-model (bi-temporal card)")
    for path, steps, arg in ((model, 1, "--model"), (change_model, 2, "--change-model")):
        if path is not None:
            _check_kind(read_card(path), steps, arg)

    def window(text: str) -> dict:
        start, end = parse_interval(text)
        if start is None or end is None:
            raise ChangeError(f"date window {text!r} must have both ends", fix="e.g. 2016 or 2016-03-01/2016-06-30")
        return {"start": start.date().isoformat(), "end": end.date().isoformat()}

    b = to_region(region).boundingbox
    spec = WorkflowSpec.model_validate({
        "name": re.sub(r"[^A-Za-z0-9_.-]", "_", out_dir.resolve().name).lstrip("._-") or "change",
        "region": {"bbox": [b.left, b.bottom, b.right, b.top]},
        "catalog": {"url": source, "collections": [c for c in (collections or "").split(",") if c], "max_cloud_cover": max_cloud},
        "change": {"before": window(before), "after": window(after)},
        "models": {"segment": str(model.resolve()) if model else None, "change": str(change_model.resolve()) if change_model else None},
        "products": {"quicklook": False, "min_area_m2": min_area, "simplify_m": simplify},
        "output": str(out_dir.resolve()), "dask": {"workers": workers}, "device": device,
    })
    run_job(resolve(spec, base=Path.cwd()), scheduler=scheduler, echo=typer.echo)


@app.command()
def vectorize(
    class_cog: Path = typer.Argument(..., help="Class raster (*_class.tif from geoseg predict)."),
    out: Path = typer.Argument(..., help="GeoPackage to write."),
    confidence: Optional[Path] = typer.Option(None, "--confidence", help="Confidence raster on the same grid (gives mean_confidence)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model card (.json): class names and colours (default: the raster's metadata)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Layer name, one per product, e.g. water (default: the raster's file stem)."),
    min_area: float = typer.Option(0.0, "--min-area", help="m²: smaller regions merge into their largest neighbour (holes filled)."),
    simplify: float = typer.Option(0.0, "--simplify", help="m: topology-preserving (coverage) simplification tolerance."),
    smooth: bool = typer.Option(False, "--smooth", help="Smooth edges (Chaikin), keeping neighbours gap-free."),
    crs: Optional[str] = typer.Option(None, "--crs", help="Write geometries in this CRS, e.g. EPSG:4326 (default: the raster's)."),
    block_size: int = typer.Option(1024, "--block-size", help="Pixels per block side (memory grows with its square)."),
    append: bool = typer.Option(False, "--append", help="Add the layer to an existing GeoPackage."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (or layer, with --append)."),
) -> None:
    """Polygonize a class raster into a GeoPackage layer that opens styled in QGIS."""
    import warnings

    import pyogrio

    from geoseg.models import read_card
    from geoseg.vectorize import vectorize as run_vectorize

    card = read_card(model) if model else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = run_vectorize(class_cog, out, confidence=confidence, card=card, layer=layer, min_area=min_area, simplify=simplify,
                             smooth=smooth, crs=crs, block_size=block_size, append=append, overwrite=overwrite)
    for w in caught:
        _err(f"warning: {w.message}")
    name = layer or class_cog.stem
    typer.echo(f"wrote {path}  (layer {name!r}, {pyogrio.read_info(path, layer=name)['features']} polygons)")


@app.command()
def serve(
    catalog: Path = typer.Argument(Path("catalogs/demo"), help="Directory (or JSON) of a static STAC catalog."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    stac_port: int = typer.Option(7822, help="Port of the STAC API."),
    files_port: int = typer.Option(7823, help="Port of the COG file server."),
) -> None:
    """Serve a static catalog as a real STAC API plus a Range-capable COG server, until Ctrl-C."""
    from geoseg.serve import LoopbackServers

    with LoopbackServers(catalog, host=host, stac_port=stac_port, files_port=files_port) as srv:
        typer.echo(f"STAC API:    {srv.stac_url}   (try: geoseg search {srv.stac_url})")
        typer.echo(f"COG server:  {srv.files_url}")
        typer.echo("Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            typer.echo("stopping")


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: the workflow's, out/demo)."),
    workflow: Path = typer.Option(None, help="Workflow to run (default: workflows/demo.yaml)."),
) -> None:
    """Run the main job end to end on the embedded demo catalog (workflows/demo.yaml; starts and stops the loopback servers)."""
    from geoseg.demo import DEMO_WORKFLOW, run as run_demo

    run_demo(workflow or DEMO_WORKFLOW, out=out, echo=typer.echo)


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config YAML (schema: geoseg.train_config.TrainConfig; unknown keys are refused)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for NAME.safetensors and NAME.json (default: the config's directory)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA with mixed precision when present, else CPU float32), cpu, cuda, cuda:N."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (1 is fastest on a busy machine)."),
    progress: bool = typer.Option(True, help="Show a progress bar with loss and validation metric."),
) -> None:
    """Train a band-aware model from labelled scenes; write its weights and model card.

    Every input check (bands, label values, overlap, empty classes, chip size)
    runs before the first training step. The card records the config, the data
    files with their sha256, this command and the validation scores.
    """
    import shlex

    from geoseg.train import train as run_train

    argv = ["geoseg", "train", str(config)] + (["--out", str(out)] if out else []) + (["--device", device] if device != "auto" else []) \
        + (["--threads", str(threads)] if threads else [])
    res = run_train(config, out, device=None if device == "auto" else device, command=shlex.join(argv), threads=threads,
                    progress=progress, log=typer.echo)
    typer.echo(f"model card: {res.card_path}")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model card (.json) with its .safetensors beside it."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Eval config YAML: labelled scenes, label values per class, baselines (schema: geoseg.train_config.EvalConfig)."),
    image: Optional[List[str]] = typer.Option(None, "--image", help="Instead of --config: imagery of one scene (a directory of band files or a multi-band file); twice for a change model, earlier first."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="With --image: label raster, or GeoPackage/GeoJSON (then --attribute)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="With --labels: raster whose grid a label file without georeferencing takes."),
    attribute: Optional[str] = typer.Option(None, "--attribute", help="With vector --labels: the class attribute."),
    values: Optional[List[str]] = typer.Option(None, "--values", help="With --image: CLASS=V[,V...] label values of a model class (repeat per class)."),
    ignore: Optional[str] = typer.Option(None, "--ignore", help="With --image: comma-separated label values meaning 'no label'."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for the .eval.json and .eval.md reports (default: the config's, else the model's directory)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Tiles per network call."),
) -> None:
    """Score a model on labelled scenes: per-class IoU, F1, precision, recall and confusion matrix.

    Predictions come from the same tiled, stitched full-scene path as `geoseg
    predict` (no chips); unlabelled pixels are excluded. Writes NAME.eval.json
    and NAME.eval.md.
    """
    import shlex

    from geoseg.evaluate import evaluate as run_evaluate, report_paths, write_report
    from geoseg.models import read_card
    from geoseg.train_config import ConfigError, EvalConfig

    card = read_card(model)
    if (config is None) == (not image):
        raise ConfigError("give either --config EVAL.yaml or --image (with --labels and --values)", fix="see geoseg evaluate --help")
    if config is not None:
        cfg, src = config, config
    else:
        if labels is None or not values:
            raise ConfigError("--image needs --labels and at least one --values CLASS=V", fix="e.g. --values water=1 --values not-water=0 --ignore -1")
        classes = []
        for spec in values:
            name, _, vals = spec.partition("=")
            try:
                classes.append({"name": name.strip(), "values": [int(v) for v in vals.split(",") if v.strip()]})
            except ValueError:
                raise ConfigError(f"--values {spec!r} is not CLASS=V[,V...] with integer values", fix="e.g. --values change=2") from None
        lab = {"path": str(labels)}
        if reference:
            lab["reference"] = str(reference)
        if attribute:
            lab["attribute"] = attribute
        try:
            cfg = EvalConfig.model_validate({
                "classes": classes, "ignore_values": [int(v) for v in (ignore or "").split(",") if v.strip()],
                "scenes": [{"id": labels.stem, "dates": list(image), "labels": lab}],
            })
        except Exception as err:
            raise ConfigError(f"bad evaluate options: {str(err).splitlines()[-1].strip()}", fix="see geoseg evaluate --help") from None
        src = None
    out_dir = out or (config.parent if config is not None else Path(model).parent)
    json_path, md_path = report_paths(out_dir, src, card.name)
    argv = ["geoseg", "evaluate", str(model)] + (["--config", str(config)] if config else []) \
        + sum((["--image", i] for i in image or []), []) + (["--labels", str(labels)] if labels else []) \
        + (["--reference", str(reference)] if reference else []) + (["--attribute", attribute] if attribute else []) \
        + sum((["--values", v] for v in values or []), []) + (["--ignore", ignore] if ignore else []) \
        + (["--out", str(out)] if out else []) + (["--batch-size", str(batch_size)] if batch_size else [])
    report = run_evaluate(model, cfg, device=None if device == "auto" else device, batch_size=batch_size,
                          command=shlex.join(argv), log=typer.echo)
    write_report(report, json_path, md_path)
    for cname, s in report["overall"]["model"]["per_class"].items():
        typer.echo(f"overall {cname}: IoU {s['iou'] if s['iou'] is None else round(s['iou'], 4)}  F1 {s['f1'] if s['f1'] is None else round(s['f1'], 4)}  "
                   f"precision {s['precision'] if s['precision'] is None else round(s['precision'], 4)}  recall {s['recall'] if s['recall'] is None else round(s['recall'], 4)}")
    typer.echo(f"wrote {json_path}\nwrote {md_path}")


def _print_version(value: bool) -> None:
    # an eager option callback: runs while parsing, before click asks for a command
    if value:
        from geoseg import __version__

        typer.echo(f"geoseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    pass


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point: runs the app, turns errors into messages and exit codes."""
    import click

    # typer >= 0.2x vendors its own click (typer._click): catch both families
    exits = (click.exceptions.Exit, typer.Exit)
    usage = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
    aborts = (click.exceptions.Abort, typer.Abort)
    try:
        debug = envvars.switch("GEOSEG_DEBUG", False)
    except GeosegError as err:
        _err(f"error: {err}")
        return err.exit_code
    try:
        result = app(args=argv, standalone_mode=False, prog_name="geoseg")
        return result if isinstance(result, int) else 0
    except GeosegError as err:
        if debug:
            raise
        _err(f"error: {err}")
        return err.exit_code
    except exits as ex:
        return ex.exit_code
    except usage as ex:
        if hasattr(ex, "show"):
            ex.show()
        else:
            _err(f"error: {ex}")
        return 2
    except aborts:
        _err("aborted")
        return 130
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Exception as err:  # a bug: say so plainly, no traceback unless asked
        if debug:
            raise
        _err(f"error: unexpected {type(err).__name__}: {err}\n  fix: rerun with GEOSEG_DEBUG=1 and report the traceback")
        return 1


if __name__ == "__main__":
    sys.exit(main())
