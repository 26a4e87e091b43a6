"""Band resolution: which asset of a STAC item holds the band a user names.

A user names a band by its common name (``red``, ``nir``, ``swir16``), by its
sensor band name (``B04``) or by the item's asset key (``red``, ``B04``,
``nir08``). :func:`resolve_band` turns that into a :class:`BandAsset`: the asset
key, its href, and how to turn its digital numbers into physical values
(``raster:bands`` scale, offset and nodata).

Both band metadata styles are read: STAC 1.0 ``eo:bands`` / ``raster:bands``
and STAC 1.1 ``bands`` with ``eo:common_name`` / ``raster:scale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pystac

from geoseg.errors import BandNotFoundError

#: Sentinel-2 MSI reflectance bands: common name -> band name.
SENTINEL2_BANDS = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04",
    "rededge1": "B05", "rededge2": "B06", "rededge3": "B07", "nir": "B08",
    "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11", "swir22": "B12",
}

_COG_TYPES = ("image/tiff", "image/vnd.stac.geotiff")


@dataclass(frozen=True)
class BandAsset:
    """One band of one item, resolved to the asset that stores it."""

    name: str
    """The name the band goes by in geoseg's stacks (what the user asked for)."""
    key: str
    """The asset key in the item (``red``, ``B04``...)."""
    href: str
    """Absolute href of the asset."""
    band_name: str | None
    """Sensor band name from the metadata (``B04``), if declared."""
    common_name: str | None
    """``eo:bands`` common name (``red``), if declared."""
    scale: float
    """Physical value = DN * scale + offset."""
    offset: float
    nodata: float | None
    """DN that marks missing data, if any."""
    data_type: str | None
    resolution: float | None
    """Native ground sample distance in CRS units (metres for UTM), if known."""


def _asset_bands(asset: Mapping[str, Any]) -> list[dict]:
    """Per-band metadata of an asset, merged across the 1.0 and 1.1 styles."""
    eo = asset.get("eo:bands") or []
    raster = asset.get("raster:bands") or []
    v11 = asset.get("bands") or []
    n = max(len(eo), len(raster), len(v11))
    out = []
    for i in range(n):
        b: dict[str, Any] = {}
        if i < len(v11):
            src = v11[i]
            b["name"] = src.get("name")
            b["common_name"] = src.get("eo:common_name")
            for k in ("nodata", "data_type", "scale", "offset", "spatial_resolution"):
                for key in (k, f"raster:{k}"):
                    if key in src:
                        b[k] = src[key]
        if i < len(eo):
            b.setdefault("name", eo[i].get("name"))
            b.setdefault("common_name", eo[i].get("common_name"))
        if i < len(raster):
            for k in ("nodata", "data_type", "scale", "offset", "spatial_resolution"):
                if k in raster[i]:
                    b.setdefault(k, raster[i][k])
        for k in ("nodata", "data_type"):  # STAC 1.1 asset-level fields
            if k in asset:
                b.setdefault(k, asset[k])
        out.append(b)
    return out


def _is_data_asset(asset: Mapping[str, Any]) -> bool:
    roles = asset.get("roles") or []
    if any(r in roles for r in ("metadata", "thumbnail", "overview", "visual")):
        return False
    return "data" in roles or bool(_asset_bands(asset))


def _sentinel2_fallback(item: pystac.Item, band: Mapping[str, Any]) -> tuple[float, float] | None:
    """Scale/offset for Sentinel-2 reflectance assets that declare none.

    Products of processing baseline 04.00 and later (from 2022-01-25) carry a
    -1000 DN radiometric offset; older ones none. Declared ``raster:bands``
    values always win over this fallback.
    """
    props = item.properties
    platform = str(props.get("platform", "")) + str(props.get("constellation", ""))
    if "sentinel-2" not in platform.lower():
        return None
    if band.get("common_name") not in SENTINEL2_BANDS and band.get("name") not in SENTINEL2_BANDS.values():
        return None
    baseline = props.get("s2:processing_baseline")
    try:
        newer = baseline is not None and float(baseline) >= 4.0
    except ValueError:
        newer = False
    return 1e-4, (-0.1 if newer else 0.0)


def _resolution(item: pystac.Item, asset: Mapping[str, Any], band: Mapping[str, Any]) -> float | None:
    if band.get("spatial_resolution"):
        return float(band["spatial_resolution"])
    transform = asset.get("proj:transform") or item.properties.get("proj:transform")
    if transform:
        return abs(float(transform[0]))
    gsd = asset.get("gsd") or item.properties.get("gsd")
    return float(gsd) if gsd else None


def _build(item: pystac.Item, name: str, key: str) -> BandAsset:
    asset = item.assets[key]
    meta = asset.to_dict()
    bands = _asset_bands(meta)
    band = bands[0] if bands else {}
    scale, offset = band.get("scale"), band.get("offset")
    if scale is None and offset is None:
        scale, offset = _sentinel2_fallback(item, band) or (1.0, 0.0)
    return BandAsset(
        name=name,
        key=key,
        href=asset.get_absolute_href() or asset.href,
        band_name=band.get("name"),
        common_name=band.get("common_name"),
        scale=float(1.0 if scale is None else scale),
        offset=float(0.0 if offset is None else offset),
        nodata=None if band.get("nodata") is None else float(band["nodata"]),
        data_type=band.get("data_type"),
        resolution=_resolution(item, meta, band),
    )


def available_bands(item: pystac.Item) -> list[str]:
    """Names a user may ask for: asset keys, band names and common names."""
    names: list[str] = []
    for key, asset in item.assets.items():
        meta = asset.to_dict()
        if not _is_data_asset(meta):
            continue
        names.append(key)
        bands = _asset_bands(meta)
        if len(bands) == 1:
            for field in ("name", "common_name"):
                value = bands[0].get(field)
                if value and value not in names:
                    names.append(value)
    return names


def _prefer_cog(item: pystac.Item, keys: list[str]) -> list[str]:
    """Among assets holding the same band, keep the cloud-optimized GeoTIFFs."""
    cogs = [k for k in keys if (item.assets[k].media_type or "").startswith(_COG_TYPES)]
    return cogs or keys


def resolve_band(item: pystac.Item, name: str) -> BandAsset:
    """Find the asset of ``item`` that holds band ``name``.

    Lookup order: exact asset key; sensor band name (``B04``, case-insensitive);
    common name (``red``). When several assets hold the band (a COG and a JPEG2000
    copy), the COG wins. A name that still matches several distinct bands (the
    common name ``rededge`` names B05, B06 and B07) is refused as ambiguous.

    Raises
    ------
    BandNotFoundError
        Listing the names this item offers.
    """
    data_keys = [k for k, a in item.assets.items() if _is_data_asset(a.to_dict())]
    if name in data_keys:
        return _build(item, name, name)

    single = {k: _asset_bands(item.assets[k].to_dict()) for k in data_keys}
    single = {k: b[0] for k, b in single.items() if len(b) == 1}
    for field, match in (
        ("name", lambda v: v is not None and v.lower() == name.lower()),
        ("common_name", lambda v: v == name),
    ):
        keys = _prefer_cog(item, [k for k, b in single.items() if match(b.get(field))])
        if len(keys) == 1:
            return _build(item, name, keys[0])
        if len(keys) > 1:
            raise BandNotFoundError(
                f"band {name!r} is ambiguous in item {item.id!r}: assets {', '.join(keys)} all "
                f"declare {field} {name!r}",
                fix=f"ask for one of them by asset key ({', '.join(keys)})",
            )
    raise BandNotFoundError(
        f"band {name!r} not found in item {item.id!r}",
        fix="use one of the available bands: " + ", ".join(available_bands(item)),
    )


def resolve_bands(item: pystac.Item, names: Sequence[str]) -> list[BandAsset]:
    """Resolve several names; all missing names are reported together."""
    if isinstance(names, str):
        names = [names]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if list(names).count(n) > 1})
        raise BandNotFoundError(f"bands requested twice: {', '.join(dupes)}", fix="list each band once")
    found, missing = [], []
    for n in names:
        try:
            found.append(resolve_band(item, n))
        except BandNotFoundError as err:
            if "ambiguous" in err.message:
                raise
            missing.append(n)
    if missing:
        raise BandNotFoundError(
            f"band{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not found in item {item.id!r}",
            fix="use one of the available bands: " + ", ".join(available_bands(item)),
        )
    return found
