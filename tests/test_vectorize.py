"""geoseg.vectorize / geoseg.gpkg: seam-free block-wise polygons, clean-up, GeoPackage, QGIS."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
from odc.geo.geobox import GeoBox
from odc.geo.xr import wrap_xr
from shapely.geometry import shape

from geoseg.cli import main as cli_main
from geoseg.errors import InputError
from geoseg.io import write_cog
from geoseg.outputs import class_colormap, class_metadata
from geoseg.vectorize import VectorizeWarning, vectorize
from tests.helpers import make_card

RES = 10.0
NODATA = 255


def grid(h: int, w: int) -> GeoBox:
    return GeoBox.from_bbox((450000, 5400000 - h * RES, 450000 + w * RES, 5400000), crs="EPSG:32631", resolution=RES, tight=True)


def blobs(h: int, w: int, *, classes: int = 4, scale: int = 6, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Touching blobs of ``classes`` classes (smooth-ish random field, argmax), optional speckle."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(h // scale + 3, w // scale + 3, classes))
    f = np.kron(f, np.ones((scale, scale, 1)))
    # a cheap box blur makes rounded blobs instead of squares
    k = max(1, scale // 2)
    c = np.cumsum(np.cumsum(np.pad(f, ((1, 0), (1, 0), (0, 0))), 0), 1)
    f = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k])[:h, :w]
    a = f.argmax(-1).astype("uint8")
    if noise:
        m = rng.random((h, w)) < noise
        a[m] = rng.integers(0, classes, m.sum())
    return a


def as_da(a: np.ndarray, nodata=NODATA):
    da = wrap_xr(a, grid(*a.shape))
    if nodata is not None:
        da.attrs["nodata"] = nodata
    return da


def reference(a: np.ndarray, nodata=NODATA):
    """Whole-array rasterio polygonize, in map coordinates: [(polygon, class)]."""
    return [(shape(g), int(v)) for g, v in rasterio.features.shapes(a, connectivity=4, transform=grid(*a.shape).transform) if v != nodata]


def same_polygons(gdf, ref) -> bool:
    def key(g, c):  # equal polygons may differ in collinear vertices: sort by class, area, bounds
        return (int(c), g.area, *g.bounds)

    got = sorted(((key(g, c), g) for g, c in zip(gdf.geometry.values, gdf.class_id)), key=lambda t: t[0])
    want = sorted(((key(g, c), g) for g, c in ref), key=lambda t: t[0])
    return len(got) == len(want) and all(kg == kw and shapely.equals(gg, gw) for (kg, gg), (kw, gw) in zip(got, want))


def class_cog(path: Path, a: np.ndarray, card, provenance=None, *, crs=True) -> Path:
    tags, band = class_metadata(card, provenance or {"stac_items": "S2B_31UDQ_20200501", "datetimes": "2020-05-01T10:50:00Z"})
    write_cog(a, path, grid(*a.shape), dtype="uint8", nodata=card.nodata_class, colormap=class_colormap(card), tags=tags, band_tags=[band])
    return path


def card3():
    from geoseg.models import ClassInfo

    return make_card(classes=3).model_copy(update={"classes": (
        ClassInfo(id=0, name="water", color=(0, 90, 255)),
        ClassInfo(id=1, name="forest", color=(20, 160, 40)),
        ClassInfo(id=2, name="urban", color=(230, 30, 30)),
    )})


def card4():
    from geoseg.models import ClassInfo

    card = card3()
    return card.model_copy(update={"classes": card.classes + (ClassInfo(id=3, name="bare", color=(200, 200, 0)),)})


# ------------------------------------------------------------------ seam-free polygonize

@pytest.mark.parametrize("seed,block", [(0, 16), (1, 23), (2, 37), (3, 1024)])
def test_equals_whole_raster_shapes_whatever_the_block_size(seed, block):
    a = blobs(90, 117, classes=3, scale=5, noise=0.03, seed=seed)
    a[:6, :11] = NODATA
    a[40:44, 20:80] = NODATA
    g = vectorize(as_da(a), card=card3(), block_size=block)
    assert same_polygons(g, reference(a))
    for c in range(3):
        assert g.area_m2[g.class_id == c].sum() == (a == c).sum() * RES * RES  # exact
        assert g.pixel_count[g.class_id == c].sum() == (a == c).sum()


def test_object_spanning_four_blocks_is_one_polygon():
    a = np.zeros((64, 64), dtype="uint8")
    yy, xx = np.mgrid[:64, :64]
    a[(yy - 32) ** 2 + (xx - 31.5) ** 2 < 15 ** 2] = 1  # a disk on the corner of four 32-px blocks
    a[30:34, 30:34] = 2  # with a hole of another class, also on the corner
    for opts in ({}, {"simplify": 10.0}, {"simplify": 10.0, "smooth": True}):
        g = vectorize(as_da(a), card=card3(), block_size=32, **opts)
        disk = g[g.class_id == 1]
        assert len(disk) == 1 and len(g) == 3
        poly = shapely.get_geometry(disk.geometry.values[0], 0)
        assert len(poly.interiors) == 1
        if not opts:
            assert disk.area_m2.iloc[0] == (a == 1).sum() * 100


def test_simplify_and_smooth_keep_the_coverage_gap_free_and_areas_within_half_percent():
    a = blobs(200, 260, classes=4, scale=24, seed=5)  # several touching classes, no nodata
    full = a.size * RES * RES
    for opts in ({"simplify": 10.0}, {"simplify": 20.0, "smooth": True}, {"smooth": True}):
        for block in (64, 1024):
            g = vectorize(as_da(a, nodata=None), card=card4(), block_size=block, **opts)
            geoms = g.geometry.values
            assert shapely.is_valid(geoms).all()
            assert len(g) == len(reference(a, nodata=None))  # one feature per region still
            # no overlaps (sum == union) and no gaps (union == the raster's rectangle)
            assert g.area.sum() == pytest.approx(full, rel=1e-9)
            assert shapely.union_all(geoms).area == pytest.approx(full, rel=1e-9)
            for c in range(4):
                assert g.area[g.class_id == c].sum() == pytest.approx((a == c).sum() * 100, rel=0.005), (opts, block, c)


def test_min_area_is_a_global_sieve_independent_of_blocks():
    a = blobs(96, 120, classes=3, scale=8, noise=0.04, seed=7)
    a[:8, :8] = NODATA
    a[3, 3] = 1  # a tiny island inside nodata: dropped
    a[60:80, 60:80] = 0
    a[69:71, 69:71] = 2  # a 4-px hole in a big region: filled
    min_px = 6
    results = [vectorize(as_da(a), card=card3(), block_size=b, min_area=min_px * 100.0) for b in (16, 29, 1024)]
    assert same_polygons(results[0], list(zip(results[1].geometry.values, results[1].class_id)))
    assert same_polygons(results[0], list(zip(results[2].geometry.values, results[2].class_id)))
    g = results[0]
    assert (g.pixel_count >= min_px).all()
    valid = ((a != NODATA).sum() - 1) * 100  # minus the dropped island
    assert g.area.sum() == valid and shapely.union_all(g.geometry.values).area == valid  # gap-free
    hole = shapely.Point(450000 + 70 * RES, 5400000 - 70 * RES)
    host = g[g.intersects(hole)]
    assert len(host) == 1 and int(host.class_id.iloc[0]) == 0


def test_chaikin_is_symmetric_so_shared_edges_match():
    from geoseg.vectorize import _chaikin_ring

    xy = np.array([[0, 0], [3, 0], [3, 2], [5, 2], [5, 5], [0, 5]], dtype=float)
    fixed = np.array([True, False, False, True, False, False])
    fwd = _chaikin_ring(xy, fixed, 2)
    rev = _chaikin_ring(xy[::-1].copy(), fixed[::-1].copy(), 2)
    assert {tuple(p) for p in fwd} == {tuple(p) for p in rev}
    assert (0.0, 0.0) in {tuple(p) for p in fwd} and (5.0, 2.0) in {tuple(p) for p in fwd}


# ------------------------------------------------------------------ GeoPackage

@pytest.fixture
def cogs(tmp_path):
    card = card3()
    a = blobs(120, 150, classes=3, scale=15, seed=3)
    a[:10, :20] = NODATA
    cls = class_cog(tmp_path / "scene_class.tif", a, card)
    conf = np.full(a.shape, 0.75, dtype="float32")
    conf[a == 1] = 0.5
    conf[a == NODATA] = np.nan
    cf = write_cog(conf, tmp_path / "scene_confidence.tif", grid(*a.shape), dtype="float32", nodata=float("nan"))
    return card, a, cls, cf


def test_geopackage_reopens_with_crs_schema_metadata_index_and_style(cogs, tmp_path):
    card, a, cls, conf = cogs
    out = vectorize(cls, tmp_path / "out.gpkg", confidence=conf, layer="water", simplify=10.0, block_size=64)
    info = pyogrio.read_info(out, layer="water")
    assert info["crs"] == "EPSG:32631" and info["geometry_type"] == "MultiPolygon"
    assert list(info["fields"]) == ["class_id", "class_name", "area_m2", "perimeter_m", "mean_confidence", "pixel_count",
                                    "model", "model_version", "stac_items", "datetimes"]
    assert info["layer_metadata"]["model"] == card.name and info["layer_metadata"]["stac_items"] == "S2B_31UDQ_20200501"
    df = pyogrio.read_dataframe(out, layer="water")
    assert len(df) == len(reference(a)) and df.is_valid.all()
    assert set(df.class_name) == {"water", "forest", "urban"}
    assert np.allclose(df.mean_confidence, np.where(df.class_id == 1, 0.5, 0.75))
    assert (df.model_version == card.version).all() and (df.datetimes == "2020-05-01T10:50:00Z").all()
    assert np.allclose(df.perimeter_m, df.length) and np.allclose(df.area_m2, df.area)
    con = sqlite3.connect(out)
    try:
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'rtree_water_geom'").fetchone()[0] == 1
        qml, default = con.execute("SELECT styleQML, useAsDefault FROM layer_styles WHERE f_table_name = 'water'").fetchone()
        assert default == 1 and 'type="categorizedSymbol"' in qml and 'label="forest"' in qml and "20,160,40,255" in qml
    finally:
        con.close()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_requested_crs_and_layers_per_product(cogs, tmp_path):
    card, a, cls, _ = cogs
    out = vectorize(cls, tmp_path / "p.gpkg", layer="water", crs="EPSG:4326")
    vectorize(cls, out, layer="change", append=True)
    assert {n for n, _ in pyogrio.list_layers(out)} >= {"water", "change"}
    assert pyogrio.read_info(out, layer="water")["crs"] == "EPSG:4326"
    w = pyogrio.read_dataframe(out, layer="water")
    assert w.total_bounds[0] == pytest.approx(2.3, abs=1.0)  # degrees, not metres
    assert np.allclose(w.area_m2, pyogrio.read_dataframe(out, layer="change").area_m2)  # measured on the grid
    with pytest.raises(InputError, match="already exists"):
        vectorize(cls, out, layer="change", append=True)


# ------------------------------------------------------------------ bad input

def test_raster_without_crs_is_refused_with_the_fix(tmp_path):
    p = tmp_path / "nocrs.tif"
    with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 8, 8), "uint8"))
    with pytest.raises(InputError, match="no CRS") as err:
        vectorize(p, tmp_path / "o.gpkg")
    assert "EPSG" in str(err.value) and not (tmp_path / "o.gpkg").exists()


def test_values_not_in_the_card_are_reported_and_kept_as_unknown(tmp_path):
    card = card3()
    a = blobs(40, 40, classes=3, scale=10, seed=1)
    a[10:14, 10:14] = 9
    with pytest.warns(VectorizeWarning, match=r"\[9\].*unknown"):
        out = vectorize(class_cog(tmp_path / "c.tif", a, card), tmp_path / "o.gpkg", layer="x")
    df = pyogrio.read_dataframe(out, layer="x")
    assert (df.class_name[df.class_id == 9] == "unknown").all() and (df.class_id == 9).sum() == 1


def test_all_nodata_gives_an_empty_valid_layer_with_a_warning(tmp_path):
    a = np.full((50, 70), NODATA, dtype="uint8")
    with pytest.warns(VectorizeWarning, match="no classified pixel"):
        out = vectorize(class_cog(tmp_path / "c.tif", a, card3()), tmp_path / "o.gpkg", layer="empty", block_size=32)
    info = pyogrio.read_info(out, layer="empty")
    assert info["features"] == 0 and info["crs"] == "EPSG:32631" and "class_id" in list(info["fields"])


def test_existing_output_refused_unless_overwrite(cogs, tmp_path):
    _, _, cls, _ = cogs
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match="overwrite"):
        vectorize(cls, out)
    assert out.read_bytes() == b"precious"
    vectorize(cls, out, overwrite=True)
    assert pyogrio.read_info(out)["features"] > 0


def test_failure_midway_leaves_nothing_half_written(cogs, tmp_path, monkeypatch):
    import geoseg.vectorize as vz

    _, _, cls, _ = cogs

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(vz, "_frame", boom)
    with pytest.raises(RuntimeError):
        vectorize(cls, tmp_path / "o.gpkg")
    assert [p.name for p in tmp_path.iterdir() if "o." in p.name] == []


def test_read_only_directory_is_a_clear_error(cogs, tmp_path):
    _, _, cls, _ = cogs
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: directory permissions are not enforced")
        with pytest.raises(InputError, match="not writable"):
            vectorize(cls, ro / "o.gpkg")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_unwritable_directory_is_a_clear_error_even_as_root(cogs, tmp_path, monkeypatch):
    _, _, cls, _ = cogs
    out_dir = tmp_path / "locked"
    out_dir.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == out_dir else real(p, mode, *a, **k))
    with pytest.raises(InputError, match="not writable"):
        vectorize(cls, out_dir / "o.gpkg")
    assert list(out_dir.iterdir()) == []


def test_cli_vectorize(cogs, tmp_path, capsys):
    _, a, cls, conf = cogs
    out = tmp_path / "cli.gpkg"
    assert cli_main(["vectorize", str(cls), str(out), "--confidence", str(conf), "--layer", "water", "--min-area", "300",
                     "--simplify", "10", "--smooth"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert pyogrio.read_info(out, layer="water")["features"] > 0
    assert cli_main(["vectorize", str(cls), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 4, 4), "uint8"))
    assert cli_main(["vectorize", str(nocrs), str(tmp_path / "n.gpkg")]) == 2
    assert "no CRS" in capsys.readouterr().err


# ------------------------------------------------------------------ QGIS

SYSTEM_PY = "/usr/bin/python3"


def _qgis_missing() -> str | None:
    if not Path(SYSTEM_PY).exists():
        return f"{SYSTEM_PY} not found"
    r = subprocess.run([SYSTEM_PY, "-c", "import qgis.core"], capture_output=True, text=True,
                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    if r.returncode:
        return f"{SYSTEM_PY} cannot import qgis (apt-get install python3-qgis qgis-providers; .ci/run does): {r.stderr.strip()[-200:]}"
    return None


def test_qgis_opens_the_layer_styled_and_renders_the_class_colours(cogs, tmp_path):
    missing = _qgis_missing()
    if missing:
        pytest.skip(missing)
    card, a, cls, conf = cogs
    out = vectorize(cls, tmp_path / "q.gpkg", confidence=conf, layer="landcover", simplify=10.0)
    png = tmp_path / "q.png"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    r = subprocess.run([SYSTEM_PY, str(Path(__file__).with_name("qgis_check.py")), str(out), "landcover", str(png)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["renderer"] == "categorizedSymbol" and info["field"] == "class_id" and info["crs"] == "EPSG:32631"
    assert [(int(c["value"]), c["label"], tuple(c["color"])) for c in info["categories"]] == [
        (c.id, c.name, c.color) for c in card.classes]
    with rasterio.open(png) as ds:
        rgb = ds.read()[:3].reshape(3, -1).T
    seen = {tuple(p) for p in np.unique(rgb, axis=0).tolist()}
    for c in card.classes:
        share = np.all(rgb == c.color, axis=1).mean()
        assert c.color in seen and share > 0.02, (c.name, share)
