"""The README's main job: ``workflows/demo.yaml`` end to end.

It serves the embedded demo catalog on loopback (a real STAC API and a
Range-capable COG server), searches it, segments every scene of the window
with the geoseg-trained ``s2-water`` model, compares the two dates (class
transitions and the bi-temporal ``oscd-urban-change`` model), and writes
COGs, a GeoPackage styled for QGIS and a run manifest to ``out/demo/``, on a
local Dask cluster.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_WORKFLOW = REPO / "workflows" / "demo.yaml"


def run(workflow: Path = DEMO_WORKFLOW, *, out: Path | None = None, echo=print, fresh: bool = True):
    """Run the demo workflow (into ``out`` if given); returns the run report."""
    import shutil

    from geoseg.runner import run as run_job
    from geoseg.workflow import read, resolve

    job = resolve(read(workflow), base=workflow.parent)
    if out is not None:
        from dataclasses import replace

        job = replace(job, output=Path(out).resolve())
    if fresh and job.output.exists():  # the demo always shows a full run
        shutil.rmtree(job.output)
    report = run_job(job, echo=echo)
    echo("")
    echo(f"Open {job.output / (job.name + '.gpkg')} in QGIS (Layer > Add Layer > Vector): every layer comes styled.")
    echo(f"Rasters: {job.output}/*_class.tif (classes), *_confidence.tif, *_change_probability_*.tif, quick-looks *_rgb.png")
    return report
