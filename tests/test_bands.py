"""Band resolution on real Earth Search v1 items (tests/data/earth-search) and
on the embedded demo catalog."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pystac
import pytest

from geoseg.bands import SENTINEL2_BANDS, _build, available_bands, resolve_band, resolve_bands
from geoseg.errors import BandNotFoundError, InputError

# pystac's storage-extension migration cannot parse the Earth Search S3 hrefs; harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Could not parse bucket/account from href:UserWarning")

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data" / "earth-search"
DEMO = TESTS.parent / "catalogs" / "demo" / "sentinel-2-l1c"

L2A = DATA / "sentinel-2-l2a" / "S2B_24MUV_20250731_0_L2A.json"
C1_L2A = DATA / "sentinel-2-c1-l2a" / "S2B_T24MUV_20250731T130245_L2A.json"
L1C = DATA / "sentinel-2-l1c" / "S2B_24MUV_20250731_0_L1C.json"
ALL_ITEMS = sorted(DATA.glob("*/*.json"))

REQUEST = ["blue", "green", "red", "nir", "swir16", "nir08"]
#: name asked -> (asset key, band name, native resolution in m)
EXPECTED = {
    "blue": ("blue", "B02", 10.0),
    "green": ("green", "B03", 10.0),
    "red": ("red", "B04", 10.0),
    "nir": ("nir", "B08", 10.0),
    "swir16": ("swir16", "B11", 20.0),
    "nir08": ("nir08", "B8A", 20.0),
}


def _item(path: Path) -> pystac.Item:
    return pystac.Item.from_file(str(path))


def _item_from_dict(d: dict) -> pystac.Item:
    return pystac.Item.from_dict(copy.deepcopy(d), preserve_dict=False)


def test_data_files_present():
    assert {p.parent.name for p in ALL_ITEMS} == {"sentinel-2-l2a", "sentinel-2-c1-l2a", "sentinel-2-l1c"}
    assert len(ALL_ITEMS) >= 6


# ------------------------------------------------------------ common names

@pytest.mark.parametrize("path", ALL_ITEMS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_common_names_resolve(path):
    item = _item(path)
    got = resolve_bands(item, REQUEST)
    assert [b.name for b in got] == REQUEST
    for b in got:
        key, band_name, res = EXPECTED[b.name]
        assert b.key == key
        assert b.band_name == band_name
        assert b.common_name == b.name
        assert b.scale == pytest.approx(1e-4)
        assert b.offset == pytest.approx(-0.1)  # declared in raster:bands (baseline 05.11)
        assert b.nodata == 0.0
        assert b.data_type == "uint16"
        assert b.resolution == res
        assert b.href == item.assets[key].href
        assert b.href.startswith(("https://", "s3://"))


@pytest.mark.parametrize("path", [L2A, C1_L2A, L1C], ids=lambda p: p.parent.name)
def test_band_names_resolve_case_insensitively(path):
    item = _item(path)
    for common, band in SENTINEL2_BANDS.items():
        if common == "cirrus" and "cirrus" not in item.assets:  # L2A has no B10
            continue
        b = resolve_band(item, band.lower())
        assert b.band_name == band
        assert b.name == band.lower()


def test_l2a_band_name_prefers_cog_over_jp2():
    # sentinel-2-l2a ships every band twice: `red` (COG) and `red-jp2` (JPEG2000)
    item = _item(L2A)
    assert "red-jp2" in item.assets and item.assets["red-jp2"].media_type == "image/jp2"
    b = resolve_band(item, "B04")
    assert b.key == "red"
    assert b.href == item.assets["red"].href
    assert b.href.endswith(".tif")
    # the JPEG2000 copy is still reachable by its asset key
    assert resolve_band(item, "red-jp2").key == "red-jp2"


def test_c1_l2a_band_name_gives_the_cog():
    # sentinel-2-c1-l2a stores COGs only (no *-jp2 assets); B04 is asset `red`
    item = _item(C1_L2A)
    assert not any(k.endswith("-jp2") for k in item.assets)
    b = resolve_band(item, "B04")
    assert b.key == "red"
    assert (item.assets[b.key].media_type or "").startswith("image/tiff")


def test_prefer_cog_among_duplicate_common_names():
    # common name `blue` is held by the asset `blue` (key match) and by `blue-jp2`;
    # drop the key so only the common-name lookup runs, and the COG must still win
    d = json.loads(L2A.read_text())  # not Item.to_dict(): that resolves the remote root link
    d["assets"]["b02-cog"] = d["assets"].pop("blue")
    b = resolve_band(_item_from_dict(d), "blue")
    assert b.key == "b02-cog"


@pytest.mark.parametrize("path", [L2A, C1_L2A, L1C], ids=lambda p: p.parent.name)
def test_rededge_is_ambiguous(path):
    item = _item(path)
    with pytest.raises(BandNotFoundError) as ei:
        resolve_band(item, "rededge")
    msg = str(ei.value)
    assert "ambiguous" in msg
    for key in ("rededge1", "rededge2", "rededge3"):
        assert key in msg
    assert "-jp2" not in msg  # COGs win before ambiguity is judged (l2a)
    # resolve_bands re-raises the ambiguity instead of calling it "missing"
    with pytest.raises(BandNotFoundError, match="ambiguous"):
        resolve_bands(item, ["red", "rededge"])


@pytest.mark.parametrize("path", [L2A, C1_L2A, L1C], ids=lambda p: p.parent.name)
def test_rededge1_resolves(path):
    b = resolve_band(_item(path), "rededge1")
    assert (b.key, b.band_name, b.common_name, b.resolution) == ("rededge1", "B05", "rededge", 20.0)


def test_unknown_band_names_band_item_and_available():
    item = _item(C1_L2A)
    with pytest.raises(BandNotFoundError) as ei:
        resolve_band(item, "ultraviolet")
    err = ei.value
    msg = str(err)
    assert "ultraviolet" in msg
    assert item.id in msg
    assert "swir16" in msg and "B11" in msg
    assert "fix:" in msg
    # not a data band: metadata, thumbnail and overview assets are not offered
    for key in ("thumbnail", "granule_metadata", "preview", "visual"):
        assert key not in available_bands(item)
    assert isinstance(err, InputError) and isinstance(err, KeyError)
    assert err.exit_code == 2
    assert not msg.startswith("'") and not msg.startswith('"')  # not KeyError-quoted


def test_missing_bands_reported_together():
    item = _item(L1C)
    with pytest.raises(BandNotFoundError) as ei:
        resolve_bands(item, ["red", "ultraviolet", "B99", "nir"])
    msg = str(ei.value)
    assert "'ultraviolet'" in msg and "'B99'" in msg
    assert "bands " in msg  # plural
    assert item.id in msg
    assert "red" not in ei.value.message.split("not found")[0]


def test_duplicate_request_refused():
    with pytest.raises(BandNotFoundError, match="twice: red"):
        resolve_bands(_item(L1C), ["red", "nir", "red"])


def test_resolve_bands_accepts_a_single_string():
    assert [b.key for b in resolve_bands(_item(L1C), "nir")] == ["nir"]


def test_non_reflectance_assets_keep_their_own_scale():
    item = _item(L2A)
    aot = resolve_band(item, "aot")
    assert (aot.scale, aot.offset, aot.band_name) == (0.001, 0.0, None)
    scl = resolve_band(item, "scl")
    assert (scl.scale, scl.offset, scl.data_type) == (1.0, 0.0, "uint8")


# ------------------------------------------------------------ Sentinel-2 fallback

def _without_raster_bands(path: Path, **props) -> pystac.Item:
    d = json.loads(path.read_text())
    for asset in d["assets"].values():
        asset.pop("raster:bands", None)
    d["properties"].update(props)
    for k, v in list(d["properties"].items()):
        if v is None:
            del d["properties"][k]
    return _item_from_dict(d)


@pytest.mark.parametrize("path", [L2A, C1_L2A, L1C], ids=lambda p: p.parent.name)
def test_fallback_baseline_05_has_offset(path):
    item = _without_raster_bands(path, **{"s2:processing_baseline": "05.11"})
    b = _build(item, "red", "red")
    assert b.scale == pytest.approx(1e-4)
    assert b.offset == pytest.approx(-0.1)
    assert b.nodata is None  # nothing declared any more
    assert b.resolution == 10.0  # from proj:transform now


def test_fallback_baseline_02_has_no_offset():
    item = _without_raster_bands(L1C, **{"s2:processing_baseline": "02.04"})
    b = _build(item, "red", "red")
    assert b.scale == pytest.approx(1e-4)
    assert b.offset == 0.0


def test_fallback_unparsable_or_missing_baseline_means_old():
    for baseline in ("N/A", None):
        item = _without_raster_bands(L1C, **{"s2:processing_baseline": baseline})
        b = _build(item, "nir", "nir")
        assert (b.scale, b.offset) == (pytest.approx(1e-4), 0.0)


def test_fallback_only_for_sentinel2():
    item = _without_raster_bands(L1C, platform="landsat-8", constellation=None, **{"s2:processing_baseline": "05.11"})
    b = _build(item, "red", "red")
    assert (b.scale, b.offset) == (1.0, 0.0)


def test_declared_values_win_over_fallback():
    # raster:bands say offset -0.1; an old baseline in the properties must not override them
    d = json.loads(L1C.read_text())
    d["properties"]["s2:processing_baseline"] = "02.04"
    b = resolve_band(_item_from_dict(d), "red")
    assert b.offset == pytest.approx(-0.1)


# ------------------------------------------------------------ STAC 1.1 bands

def _stac11_item(asset_extra: dict | None = None, band_extra: dict | None = None) -> pystac.Item:
    band = {"name": "B04", "eo:common_name": "red", "raster:scale": 0.0001, "raster:offset": -0.1}
    band.update(band_extra or {})
    asset = {
        "href": "https://example.com/T31UDQ/B04.tif",
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data", "reflectance"],
        "bands": [band],
        "nodata": 0,
        "data_type": "uint16",
        "proj:transform": [10.0, 0.0, 399960.0, 0.0, -10.0, 5500020.0],
    }
    asset.update(asset_extra or {})
    d = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "id": "stac11-item",
        "geometry": {"type": "Polygon", "coordinates": [[[2.0, 48.0], [3.0, 48.0], [3.0, 49.0], [2.0, 49.0], [2.0, 48.0]]]},
        "bbox": [2.0, 48.0, 3.0, 49.0],
        "properties": {"datetime": "2024-06-01T10:50:00Z", "proj:code": "EPSG:32631"},
        "links": [],
        "assets": {"B04": asset},
    }
    return _item_from_dict(d)


def test_stac11_bands_resolve_common_name():
    item = _stac11_item()
    b = resolve_band(item, "red")
    assert b.key == "B04"
    assert b.band_name == "B04" and b.common_name == "red"
    assert b.scale == pytest.approx(1e-4)
    assert b.offset == pytest.approx(-0.1)
    assert b.nodata == 0.0
    assert b.data_type == "uint16"
    assert b.resolution == 10.0
    assert b.href == "https://example.com/T31UDQ/B04.tif"
    assert available_bands(item) == ["B04", "red"]


def test_stac11_band_level_values_win_over_asset_level():
    item = _stac11_item(band_extra={"raster:nodata": 65535, "raster:spatial_resolution": 20})
    b = resolve_band(item, "red")
    assert b.nodata == 65535.0
    assert b.resolution == 20.0


# ------------------------------------------------------------ projection

def _epsg(item: pystac.Item) -> int:
    props = item.properties
    if props.get("proj:epsg") is not None:
        return int(props["proj:epsg"])
    return int(str(props["proj:code"]).split(":")[-1])


@pytest.mark.parametrize("path", [L2A, C1_L2A, L1C], ids=lambda p: p.parent.name)
def test_projection_and_resolution(path):
    assert json.loads(path.read_text())["properties"]["proj:epsg"] == 32724
    item = _item(path)
    # pystac migrates projection v1 `proj:epsg` to v2 `proj:code` on read
    assert _epsg(item) == 32724
    for name, res in (("blue", 10.0), ("swir16", 20.0), ("coastal", 60.0)):
        asset = item.assets[name].to_dict()
        assert abs(asset["proj:transform"][0]) == res
        assert asset["proj:transform"][4] == -res
        assert resolve_band(item, name).resolution == res


def test_resolution_from_proj_transform_alone():
    d = json.loads(L2A.read_text())
    for asset in d["assets"].values():
        for rb in asset.get("raster:bands", []):
            rb.pop("spatial_resolution", None)
        asset.pop("gsd", None)
    item = _item_from_dict(d)
    assert [resolve_band(item, n).resolution for n in ("blue", "swir16", "coastal")] == [10.0, 20.0, 60.0]


def test_other_utm_zone_item():
    item = _item(DATA / "sentinel-2-l1c" / "S2B_20EPT_20250731_0_L1C.json")
    assert _epsg(item) == 32720
    assert resolve_band(item, "coastal").resolution == 60.0


# ------------------------------------------------------------ demo catalog

DEMO_ITEMS = sorted(DEMO.glob("*/*.json")) if DEMO.is_dir() else []


@pytest.fixture(params=DEMO_ITEMS or [None], ids=lambda p: p.stem if p else "missing")
def demo_item(request):
    path = request.param
    if path is None or not path.exists():
        pytest.skip("catalogs/demo not built (run catalogs/build_demo.py)")
    try:
        return _item(path)
    except (OSError, ValueError) as err:  # being rebuilt right now
        pytest.skip(f"demo item unreadable ({err})")


def test_demo_items_all_common_names(demo_item):
    got = resolve_bands(demo_item, list(SENTINEL2_BANDS))
    assert len(got) == 13
    for b in got:
        expected_band = SENTINEL2_BANDS[b.name]
        assert b.band_name == expected_band
        assert b.scale == pytest.approx(1e-4)
        assert b.offset == 0.0  # OSCD L1C products are baseline 02.xx: no -1000 DN offset
        assert b.nodata == 0.0
        assert b.resolution in (10.0, 20.0, 60.0)
    assert resolve_band(demo_item, "B8A").key == "nir08"
