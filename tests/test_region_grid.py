"""Regions of interest (geoseg.region) and target grids (geoseg.grid)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from odc.geo.geom import Geometry, box

from geoseg.errors import GridError, InputError, RegionError
from geoseg.grid import as_crs, target_geobox, utm_crs
from geoseg.region import parse_bbox, to_region

PARIS_BBOX = (2.30, 48.84, 2.40, 48.88)
POLYGON = {
    "type": "Polygon",
    "coordinates": [[[2.30, 48.84], [2.40, 48.84], [2.40, 48.88], [2.30, 48.88], [2.30, 48.84]]],
}


def _bounds(g: Geometry):
    b = g.boundingbox
    return b.left, b.bottom, b.right, b.top


def _approx_bounds(g: Geometry, expected, abs=1e-9):
    assert _bounds(g) == pytest.approx(expected, abs=abs)


# ------------------------------------------------------------ parse_bbox

def test_parse_bbox_ok():
    assert parse_bbox("2.3,48.8,2.4,48.9") == (2.3, 48.8, 2.4, 48.9)
    assert parse_bbox(" 2.3, 48.8, 2.4, 48.9") == (2.3, 48.8, 2.4, 48.9)
    assert parse_bbox("2.3 48.8 2.4 48.9") == (2.3, 48.8, 2.4, 48.9)
    assert parse_bbox([2.3, 48.8, 2.4, 48.9]) == (2.3, 48.8, 2.4, 48.9)
    assert parse_bbox("-180,-90,180,90") == (-180, -90, 180, 90)


@pytest.mark.parametrize(
    "text",
    [
        "2.4,48.8,2.3,48.9",  # west > east
        "2.3,48.9,2.4,48.8",  # south > north
        "2.3,48.8,2.3,48.9",  # zero width
        "a,b,c,d",
        "1,2,3",
        "1,2,3,4,5",
        "",
        "0,0,181,1",
        "0,-91,1,1",
        "nan,0,1,1",
    ],
)
def test_parse_bbox_refused(text):
    with pytest.raises(RegionError) as ei:
        parse_bbox(text)
    assert repr(text) in str(ei.value)
    assert "fix:" in str(ei.value)
    assert isinstance(ei.value, InputError) and ei.value.exit_code == 2


def test_parse_bbox_refuses_sequences_too():
    with pytest.raises(RegionError):
        parse_bbox([1, 2, 3])
    with pytest.raises(RegionError):
        parse_bbox([3, 2, 1, 4])


# ------------------------------------------------------------ to_region

def test_to_region_from_bbox_string_and_sequence():
    for spelling in ("2.30,48.84,2.40,48.88", PARIS_BBOX, list(PARIS_BBOX)):
        g = to_region(spelling)
        assert str(g.crs) == "EPSG:4326"
        _approx_bounds(g, PARIS_BBOX)


def test_to_region_from_geojson_dicts():
    feature = {"type": "Feature", "properties": {"name": "paris"}, "geometry": POLYGON}
    east = {
        "type": "Polygon",
        "coordinates": [[[2.40, 48.84], [2.50, 48.84], [2.50, 48.88], [2.40, 48.88], [2.40, 48.84]]],
    }
    fc = {"type": "FeatureCollection", "features": [feature, {"type": "Feature", "properties": {}, "geometry": east}]}
    for obj in (POLYGON, feature):
        g = to_region(obj)
        assert str(g.crs) == "EPSG:4326"
        _approx_bounds(g, PARIS_BBOX)
        assert g.area == pytest.approx(0.1 * 0.04)
    g = to_region(fc)  # union of the features
    _approx_bounds(g, (2.30, 48.84, 2.50, 48.88))
    assert g.area == pytest.approx(0.2 * 0.04)


def test_to_region_from_multipolygon():
    mp = {"type": "MultiPolygon", "coordinates": [POLYGON["coordinates"]]}
    _approx_bounds(to_region(mp), PARIS_BBOX)


def test_to_region_from_geojson_file(tmp_path):
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": POLYGON}]}))
    for spelling in (path, str(path)):
        _approx_bounds(to_region(spelling), PARIS_BBOX)
    plain = tmp_path / "aoi.json"
    plain.write_text(json.dumps(POLYGON))
    _approx_bounds(to_region(plain), PARIS_BBOX)


def test_to_region_from_geopackage_in_web_mercator(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box as sbox

    path = tmp_path / "aoi.gpkg"
    gdf = gpd.GeoDataFrame({"name": ["paris"]}, geometry=[sbox(*PARIS_BBOX)], crs="EPSG:4326").to_crs(3857)
    assert gdf.total_bounds[0] > 1000  # really metres
    gdf.to_file(path, layer="aoi", driver="GPKG")
    for layer in (None, "aoi"):
        g = to_region(path, layer=layer)
        assert str(g.crs) == "EPSG:4326"
        _approx_bounds(g, PARIS_BBOX, abs=1e-6)


def test_to_region_from_geopackage_bad_layer(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box as sbox

    path = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[sbox(*PARIS_BBOX)], crs="EPSG:4326").to_file(path, layer="aoi", driver="GPKG")
    with pytest.raises(RegionError, match="cannot read region file"):
        to_region(path, layer="nope")


def test_to_region_keeps_geometry_and_reprojects():
    g = box(*PARIS_BBOX, crs="EPSG:4326")
    assert to_region(g) is not None
    _approx_bounds(to_region(g.to_crs("EPSG:3857")), PARIS_BBOX, abs=1e-6)


def test_to_region_refuses_points_and_empty_collections():
    with pytest.raises(RegionError) as ei:
        to_region({"type": "Point", "coordinates": [2.35, 48.86]})
    assert "'Point'" in str(ei.value) and "not an area" in str(ei.value)
    with pytest.raises(RegionError, match="not an area"):
        to_region({"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [2.35, 48.86]}})
    with pytest.raises(RegionError, match="no features"):
        to_region({"type": "FeatureCollection", "features": []})


def test_to_region_refuses_point_geojson_file(tmp_path):
    path = tmp_path / "point.geojson"
    path.write_text(json.dumps({"type": "Point", "coordinates": [2.35, 48.86]}))
    with pytest.raises(RegionError) as ei:
        to_region(path)
    assert str(path) in str(ei.value)


def test_to_region_refuses_missing_path(tmp_path):
    missing = tmp_path / "nowhere.gpkg"
    with pytest.raises(RegionError) as ei:
        to_region(str(missing))
    assert str(missing) in str(ei.value)
    assert "neither an existing file nor a bbox" in str(ei.value)
    with pytest.raises(RegionError):
        to_region("paris")


# ------------------------------------------------------------ utm_crs

@pytest.mark.parametrize(
    "lon, lat, epsg",
    [
        (2.35, 48.86, 32631),  # Paris
        (-1.55, 47.2, 32630),  # Nantes
        (-43.2, -22.9, 32723),  # Rio de Janeiro
        (-0.57, 44.84, 32630),  # Bordeaux
        (179.9, 10.0, 32660),
        (-180.0, 10.0, 32601),
    ],
)
def test_utm_crs(lon, lat, epsg):
    region = box(lon - 0.005, lat - 0.005, lon + 0.005, lat + 0.005, crs="EPSG:4326")
    assert utm_crs(region).epsg == epsg


def test_utm_crs_of_projected_region():
    region = box(2.3, 48.8, 2.4, 48.9, crs="EPSG:4326").to_crs("EPSG:3857")
    assert utm_crs(region).epsg == 32631


def test_as_crs():
    assert as_crs(32631).epsg == 32631
    assert as_crs("EPSG:32631").epsg == 32631
    with pytest.raises(GridError, match="unknown CRS"):
        as_crs("EPSG:nope")


# ------------------------------------------------------------ target_geobox

def _is_multiple(x: float, res: float, tol: float = 1e-6) -> bool:
    return abs(x / res - round(x / res)) < tol


def test_geobox_anchored_at_multiples_of_resolution():
    region = to_region(PARIS_BBOX)
    gb = target_geobox(region, resolution=10)
    assert gb.crs.epsg == 32631
    a = gb.affine
    assert a.a == 10 and a.e == -10 and a.b == 0 and a.d == 0
    assert _is_multiple(a.c, 10) and _is_multiple(a.f, 10)
    assert gb.shape[0] > 0 and gb.shape[1] > 0
    # about 7.3 km x 4.4 km at 10 m
    assert 700 <= gb.shape[1] <= 760 and 430 <= gb.shape[0] <= 470


def test_overlapping_regions_share_one_grid():
    a = target_geobox(to_region("2.30,48.84,2.40,48.88"), resolution=10)
    b = target_geobox(to_region("2.35,48.86,2.45,48.90"), resolution=10)
    assert a.crs == b.crs
    assert a.affine.a == b.affine.a and a.affine.e == b.affine.e
    dx = (b.affine.c - a.affine.c) / 10
    dy = (b.affine.f - a.affine.f) / 10
    assert dx == pytest.approx(round(dx), abs=1e-6) and dx != 0
    assert dy == pytest.approx(round(dy), abs=1e-6) and dy != 0


def test_geobox_with_explicit_crs_and_sentinel2_tile_alignment():
    region = to_region(PARIS_BBOX)
    gb = target_geobox(region, crs="EPSG:32631", resolution=60)
    # Sentinel-2 tile 31UDQ origin (399960, 5500020) is a multiple of 60 m: grids nest in it
    assert _is_multiple(gb.affine.c - 399960, 60) and _is_multiple(gb.affine.f - 5500020, 60)
    assert target_geobox(region, crs=32631, resolution=60) == gb
    gb3857 = target_geobox(region, crs="EPSG:3857", resolution=10)
    assert gb3857.crs.epsg == 3857


def test_geobox_geographic_crs_needs_degrees():
    region = to_region(PARIS_BBOX)
    with pytest.raises(GridError, match="in degrees"):
        target_geobox(region, crs="EPSG:4326", resolution=10)
    gb = target_geobox(region, crs="EPSG:4326", resolution=0.001)
    assert gb.crs.epsg == 4326


@pytest.mark.parametrize("res", [0, -10, None])
def test_geobox_bad_resolution(res):
    with pytest.raises(GridError) as ei:
        target_geobox(to_region(PARIS_BBOX), resolution=res)
    assert repr(res) in str(ei.value)


def test_geobox_bad_crs():
    with pytest.raises(GridError) as ei:
        target_geobox(to_region(PARIS_BBOX), crs="EPSG:999999999", resolution=10)
    assert "EPSG:999999999" in str(ei.value)
    with pytest.raises(GridError):
        target_geobox(to_region(PARIS_BBOX), crs="not a crs", resolution=10)


# ------------------------------------------------------------ property test

@settings(max_examples=50, deadline=None)
@given(
    west=st.floats(min_value=0.1, max_value=5.6),  # UTM zone 31: 0..6 E
    south=st.floats(min_value=-60.0, max_value=60.0),
    width=st.floats(min_value=0.01, max_value=0.2),
    height=st.floats(min_value=0.01, max_value=0.2),
    res=st.sampled_from([10, 20, 60]),
)
def test_geobox_covers_region_and_is_anchored(west, south, width, height, res):
    region = box(west, south, west + width, south + height, crs="EPSG:4326")
    gb = target_geobox(region, resolution=res)
    assert gb.crs.epsg == (32631 if south + height / 2 >= 0 else 32731)
    projected = region.to_crs(gb.crs)
    pb, gbb = projected.boundingbox, gb.boundingbox
    # odc-geo's GeoBox.from_geopolygon(tol=0.01) lets an edge fall up to 1% of a
    # pixel inside the region rather than add a whole row/column for a sliver
    tol = 0.01 * res + 1e-6
    assert gbb.left <= pb.left + tol and gbb.bottom <= pb.bottom + tol
    assert gbb.right >= pb.right - tol and gbb.top >= pb.top - tol
    # covered with at most one pixel of slack on each side
    assert pb.left - gbb.left <= res and gbb.right - pb.right <= res
    assert pb.bottom - gbb.bottom <= res and gbb.top - pb.top <= res
    assert gb.extent.buffer(tol).contains(projected)
    assert _is_multiple(gb.affine.c, res) and _is_multiple(gb.affine.f, res)
    assert gb.affine.a == res and gb.affine.e == -res
    assert not math.isnan(gb.affine.c)
