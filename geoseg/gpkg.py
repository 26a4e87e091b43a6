"""GeoPackage output: streamed layers, written atomically, styled for QGIS.

:func:`write_layer` writes a stream of GeoDataFrame batches as one layer of a
GeoPackage (with GDAL's R-tree spatial index and the run's provenance as layer
metadata), then stores a QGIS style in the GeoPackage's ``layer_styles``
table as the layer's default, so QGIS opens the layer already styled. The
file is written under a temporary name and renamed on success
(:func:`geoseg.io.atomic_path`): a failure leaves no half-written GeoPackage,
and an existing one untouched.

The style is a categorized renderer on an integer field (``class_id``): one
category per class with the model card's colour and name (QML, read by QGIS,
plus an equivalent SLD for other clients).
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

import geopandas as gpd
import pyogrio

from geoseg.errors import InputError
from geoseg.io import atomic_path


@dataclass(frozen=True)
class Category:
    """One category of a categorized style."""

    value: int
    """Value of the style's field (the class id)."""
    label: str
    """Legend label (the class name)."""
    color: tuple[int, int, int]
    """RGB fill colour, 0-255 each."""


@dataclass(frozen=True)
class LayerStyle:
    """A categorized fill style on one integer field."""

    field: str
    categories: tuple[Category, ...]
    name: str = "geoseg classes"

    def qml(self) -> str:
        """QGIS QML (``categorizedSymbol`` renderer, one simple fill per category)."""
        cats, syms = [], []
        for i, c in enumerate(self.categories):
            cats.append(f'   <category value="{c.value}" label={quoteattr(c.label)} symbol="{i}" render="true"/>')
            rgba = "{},{},{},255".format(*c.color)
            props = {"color": rgba, "outline_color": rgba, "outline_style": "solid", "outline_width": "0.1",
                     "outline_width_unit": "MM", "style": "solid", "joinstyle": "bevel"}
            opts = "\n".join(f'      <Option name="{k}" type="QString" value="{v}"/>' for k, v in props.items())
            legacy = "\n".join(f'     <prop k="{k}" v="{v}"/>' for k, v in props.items())
            syms.append(
                f'   <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
                f'    <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
                f'     <Option type="Map">\n{opts}\n     </Option>\n{legacy}\n'
                f'    </layer>\n   </symbol>'
            )
        return (
            "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.22.0" styleCategories="Symbology">\n'
            f' <renderer-v2 type="categorizedSymbol" attr={quoteattr(self.field)} symbollevels="0" '
            'enableorderby="0" forceraster="0" referencescale="-1">\n'
            "  <categories>\n" + "\n".join(cats) + "\n  </categories>\n"
            "  <symbols>\n" + "\n".join(syms) + "\n  </symbols>\n"
            " </renderer-v2>\n"
            " <layerGeometryType>2</layerGeometryType>\n"
            "</qgis>\n"
        )

    def sld(self, layer: str) -> str:
        """OGC SLD 1.1 equivalent of :meth:`qml` (one rule per category)."""
        rules = []
        for c in self.categories:
            hexc = "#{:02x}{:02x}{:02x}".format(*c.color)
            rules.append(
                f"<se:Rule><se:Name>{escape(c.label)}</se:Name><se:Description><se:Title>{escape(c.label)}</se:Title></se:Description>"
                f"<ogc:Filter><ogc:PropertyIsEqualTo><ogc:PropertyName>{escape(self.field)}</ogc:PropertyName>"
                f"<ogc:Literal>{c.value}</ogc:Literal></ogc:PropertyIsEqualTo></ogc:Filter>"
                f'<se:PolygonSymbolizer><se:Fill><se:SvgParameter name="fill">{hexc}</se:SvgParameter></se:Fill>'
                f'<se:Stroke><se:SvgParameter name="stroke">{hexc}</se:SvgParameter></se:Stroke></se:PolygonSymbolizer></se:Rule>'
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<StyledLayerDescriptor version="1.1.0" xmlns="http://www.opengis.net/sld" xmlns:ogc="http://www.opengis.net/ogc" '
            'xmlns:se="http://www.opengis.net/se" xmlns:xlink="http://www.w3.org/1999/xlink">'
            f"<NamedLayer><se:Name>{escape(layer)}</se:Name><UserStyle><se:Name>{escape(self.name)}</se:Name>"
            f"<se:FeatureTypeStyle>{''.join(rules)}</se:FeatureTypeStyle></UserStyle></NamedLayer></StyledLayerDescriptor>"
        )


_LAYER_STYLES_DDL = """
CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256), f_geometry_column TEXT(256),
  styleName TEXT(30), styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN, description TEXT,
  owner TEXT(30), ui TEXT(30), update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""


def write_style(gpkg: str | Path, layer: str, style: LayerStyle, *, geometry_column: str = "geom", description: str = "") -> None:
    """Store ``style`` in ``gpkg``'s ``layer_styles`` table as ``layer``'s default
    (the table QGIS reads and writes; registered in ``gpkg_contents``)."""
    con = sqlite3.connect(str(gpkg))
    try:
        with con:
            con.execute(_LAYER_STYLES_DDL)
            con.execute(
                "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description, last_change) "
                "VALUES ('layer_styles', 'attributes', 'layer_styles', 'QGIS layer styles', strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
            )
            con.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
                "styleQML, styleSLD, useAsDefault, description, owner, ui) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, 'geoseg', '')",
                (layer, geometry_column, style.name, style.qml(), style.sld(layer), description),
            )
    finally:
        con.close()


def write_layer(
    batches: Iterable[gpd.GeoDataFrame],
    path: str | Path,
    layer: str,
    *,
    geometry_type: str = "MultiPolygon",
    metadata: Mapping[str, str] | None = None,
    description: str = "",
    style: LayerStyle | Callable[[], LayerStyle | None] | None = None,
    overwrite: bool = False,
    append: bool = False,
) -> Path:
    """Write ``batches`` (GeoDataFrames with the same columns and CRS; at least
    one, possibly empty) as layer ``layer`` of the GeoPackage ``path``.

    ``append``: add the layer to an existing GeoPackage (its other layers are
    kept; a layer of the same name is refused unless ``overwrite``). Otherwise
    an existing file is refused unless ``overwrite``, which replaces it.
    ``style`` may be a callable, called after the last batch (so it can list
    categories only found while writing). Returns ``path``.
    """
    final = Path(path)
    adding = append and final.exists()
    if adding:
        try:
            existing = {name for name, _ in pyogrio.list_layers(final)}
        except Exception as err:  # not a GeoPackage GDAL can read
            raise InputError(f"cannot add a layer to {str(final)!r}: {err}", fix="choose a new output file") from None
        if layer in existing and not overwrite:
            raise InputError(f"layer {layer!r} already exists in {str(final)!r}", fix="choose another --layer, or pass --overwrite")
    with atomic_path(final, overwrite=overwrite or adding) as tmp:
        if adding:
            shutil.copyfile(final, tmp)
        first = True
        for gdf in batches:
            if first:
                kw = dict(layer_options={"OVERWRITE": "YES", "DESCRIPTION": description or layer}, layer_metadata=dict(metadata or {}))
                if not adding:  # GeoPackage 1.2: read by older GDAL/QGIS without warnings
                    kw["dataset_options"] = {"VERSION": "1.2"}
            else:
                kw = dict(append=True)
            pyogrio.write_dataframe(gdf, tmp, layer=layer, driver="GPKG", geometry_type=geometry_type, promote_to_multi=geometry_type.startswith("Multi"), **kw)
            first = False
        if first:
            raise ValueError("write_layer needs at least one (possibly empty) batch to know the schema")
        style = style() if callable(style) else style
        if style is not None:
            write_style(tmp, layer, style, description=description)
    return final


def categories(classes: Sequence, extra: Iterable[int] = ()) -> tuple[Category, ...]:
    """Categories for ``classes`` (objects with id, name, color) plus grey
    'unknown (N)' categories for ``extra`` values."""
    cats = [Category(int(c.id), str(c.name), tuple(int(v) for v in c.color)) for c in classes]
    cats += [Category(int(v), f"unknown ({int(v)})", (128, 128, 128)) for v in sorted(set(extra))]
    return tuple(cats)
