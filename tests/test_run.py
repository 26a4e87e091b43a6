"""Workflow runs on a real distributed.LocalCluster against the loopback servers:
every product, a lost worker, a killed run resumed, a failing STAC API, the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from geoseg.cli import main as cli
from geoseg.lock import RunLock
from geoseg.models import build_network, save
from tests.helpers import make_card

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
PARIS = [2.315, 48.805, 2.350, 48.840]


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    card = make_card(("blue", "green", "red", "nir", "swir16"), tile_size=64, halo=16, divisor=32, encoder="mobilenet_v2",
                     name="seg", value_range=(-0.5, 3.0))
    return save(build_network(card).eval(), card, d)


def workflow(tmp_path: Path, model: Path, out: str = "out", **extra) -> Path:
    data = {
        "name": "t",
        "region": {"bbox": PARIS},
        "catalog": {"serve": str(REPO / "catalogs" / "demo"), "collections": ["sentinel-2-l1c"]},
        "dates": {"start": "2016-01-01", "end": "2016-12-31"},
        "models": {"segment": str(model)},
        "products": {"geopackage": False, "quicklook": False},
        "output": out,
        "dask": {"workers": 2, "threads_per_worker": 1, "memory_limit": "3GiB"},
        "device": "cpu",
    }
    data.update(extra)
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rasters(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for p in sorted(out.glob("*.tif")):
        with rasterio.open(p) as ds:
            arrays[p.name] = ds.read()
    return arrays


def same_rasters(a: Path, b: Path) -> None:
    ra, rb = rasters(a), rasters(b)
    assert ra.keys() == rb.keys() and ra
    for name in ra:
        np.testing.assert_array_equal(ra[name], rb[name], err_msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, seg_model) -> Path:
    """An uninterrupted run, to compare interrupted ones against."""
    d = tmp_path_factory.mktemp("reference")
    assert cli(["run", str(workflow(d, seg_model))]) == 0
    return d / "out"


def test_demo_workflow_produces_every_product(tmp_path, capsys):
    if not (REPO / "models" / "s2-water.json").exists() or not (REPO / "models" / "oscd-urban-change.json").exists():
        pytest.skip("shipped models not built yet")
    import json

    import pyogrio
    from rio_cogeo.cogeo import cog_validate

    from geoseg.demo import run

    report = run(out=tmp_path / "demo")
    out = tmp_path / "demo"
    names = sorted(p.name for p in out.iterdir())
    for scene in ("S2A_30TXT_20150821_0_L1C", "S2_30TXT_20171014_0_L1C"):
        for suffix in ("_rgb.tif", "_rgb.png", "_s2-water_class.tif", "_s2-water_confidence.tif"):
            assert scene + suffix in names
    dates = "2015-08-21_2017-10-14"
    for name in (f"demo_transitions_{dates}.tif", f"demo_transitions_{dates}.csv", f"demo_change_probability_{dates}.tif",
                 f"demo_change_{dates}.tif", "demo.gpkg", "run.json"):
        assert name in names, names
    for tif in out.glob("*.tif"):
        assert cog_validate(str(tif))[0], tif
    layers = {name for name, _ in pyogrio.list_layers(out / "demo.gpkg")}
    assert {"s2-water_20150821", "s2-water_20171014", f"s2-water_transitions_{dates}", f"s2-water_transition_areas_{dates}",
            f"oscd-urban-change_{dates}", "layer_styles"} <= layers
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["job"]["window"] == "2015-01-01/2017-12-31"
    assert set(manifest["items"]) == {"S2A_30TXT_20150821_0_L1C", "S2_30TXT_20171014_0_L1C"}
    hrefs = [href for item in manifest["items"].values() for href in item["assets"].values()]
    assert hrefs and all(h.startswith("http://127.0.0.1:") for h in hrefs)
    assert manifest["models"]["s2-water.json"]["sha256"] and manifest["versions"]["torch"]
    assert {"search", "predict", "write", "change", "vectorize", "total"} <= set(manifest["timings"])
    assert report.counts["tiles_computed"] == report.counts["tiles_total"] > 0
    assert not (out / ".geoseg.lock").exists() and not (out / ".cache").exists()
    qgis_opens_every_layer_styled(out / "demo.gpkg", [name for name, kind in pyogrio.list_layers(out / "demo.gpkg") if kind])


def qgis_opens_every_layer_styled(gpkg: Path, layers: list[str]) -> None:
    """QGIS itself opens each layer with its default categorized style and renders its colours."""
    import json

    from tests.test_vectorize import SYSTEM_PY, _qgis_missing

    missing = _qgis_missing()
    if missing:
        pytest.skip(f"QGIS check skipped: {missing}")
    for layer in layers:
        png = gpkg.with_name(f"{layer}.png")
        r = subprocess.run([SYSTEM_PY, str(REPO / "tests" / "qgis_check.py"), str(gpkg), layer, str(png)], capture_output=True,
                           text=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, timeout=120)
        assert r.returncode == 0, (layer, r.stdout + r.stderr)
        info = json.loads(r.stdout.strip().splitlines()[-1])
        assert info["renderer"] == "categorizedSymbol" and info["field"] == "class_id" and info["categories"], layer
        if info["features"]:
            with rasterio.open(png) as ds:
                seen = {tuple(p) for p in np.unique(ds.read()[:3].reshape(3, -1).T, axis=0).tolist()}
            assert any(tuple(c["color"]) in seen for c in info["categories"]), (layer, info["categories"])


def test_worker_killed_mid_run_still_completes(tmp_path, seg_model, reference):
    from distributed import default_client

    wf = workflow(tmp_path, seg_model)
    cache = tmp_path / "out" / ".cache"
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(cache.rglob("b*.npy")):
                try:
                    client = default_client()
                    pids = client.run(os.getpid)
                    pid = sorted(pids.values())[0]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except Exception:  # the cluster may not be up yet
                    time.sleep(0.05)
                    continue
                return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    assert cli(["run", str(wf)]) == 0
    t.join(timeout=5)
    assert killed, "no worker was killed: the run finished too fast for this test"
    same_rasters(reference, tmp_path / "out")


def test_killed_run_resumes_and_matches(tmp_path, seg_model, reference, capsys):
    import json

    wf = workflow(tmp_path, seg_model)
    cache = tmp_path / "out" / ".cache"
    proc = subprocess.Popen([sys.executable, "-m", "geoseg", "run", str(wf)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180

    def saves_tiles() -> bool:
        # at least 3 blocks, and the top two row blocks of one product: its first tile row is then needed
        # by no missing block. (Blocks scattered over products, or a gap, could save no tile at all.)
        return len(list(cache.rglob("b*.npy"))) >= 3 and any((f.parent / "b0_1_0.npy").exists() for f in cache.rglob("b0_0_0.npy"))

    while time.monotonic() < deadline and not saves_tiles() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes, mid-way
    proc.wait()
    assert cli(["run", str(wf)]) == 0  # takes over the dead run's lock, resumes from its cache
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # temporary files of the killed run are swept
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    fresh = json.loads((reference / "run.json").read_text())
    c, f = manifest["counts"], fresh["counts"]
    print(f"\nresumed run computed {c['tiles_computed']} tiles ({c['blocks_reused']} row blocks reused); "
          f"a fresh run computed {f['tiles_computed']}")
    assert c["blocks_reused"] >= 3
    assert c["tiles_computed"] < f["tiles_computed"] == f["tiles_total"]
    same_rasters(reference, tmp_path / "out")


class _Failing(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"boom")

    do_POST = do_GET

    def log_message(self, *a):
        pass


def test_stac_api_failing_gives_exit_1_and_nothing_written(tmp_path, seg_model, capsys, monkeypatch):
    import geoseg.catalog

    monkeypatch.setattr(geoseg.catalog, "DEFAULT_BACKOFF", 0.01)
    monkeypatch.setitem(geoseg.catalog.search.__kwdefaults__, "backoff", 0.01)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        wf = workflow(tmp_path, seg_model, catalog={"url": url, "collections": ["sentinel-2-l1c"]})
        rc = cli(["run", str(wf)])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert rc == 1 and url in err and "Traceback" not in err
    assert 3 <= _Failing.hits <= 20  # bounded retries
    out = tmp_path / "out"
    assert not out.exists() or [p.name for p in out.iterdir()] == []  # nothing half-written, lock released


def test_second_run_on_the_same_output_is_refused(tmp_path, seg_model, capsys):
    wf = workflow(tmp_path, seg_model)
    with RunLock(tmp_path / "out"):
        rc = cli(["run", str(wf)])
    err = capsys.readouterr().err
    assert rc == 2 and "another geoseg run" in err and str(os.getpid()) in err
