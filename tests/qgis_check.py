"""Open a geoseg GeoPackage layer with QGIS itself, headless, and render it.

Run with the SYSTEM python that has the QGIS bindings (Debian python3-qgis):

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_check.py GPKG LAYER OUT.png

Checks that the layer is valid and that its default style was loaded from the
GeoPackage's ``layer_styles`` table (a categorized renderer); renders the
layer to OUT.png and prints one JSON line: renderer type, field, categories
(value, label, colour). Exits non-zero with a message on any failure.
"""

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402


def main(gpkg: str, layer: str, png: str) -> int:
    app = QgsApplication([], False)
    app.initQgis()
    try:
        vl = QgsVectorLayer(f"{gpkg}|layername={layer}", layer, "ogr")
        if not vl.isValid():
            print(f"layer {layer!r} of {gpkg!r} is not valid in QGIS", file=sys.stderr)
            return 1
        renderer = vl.renderer()
        info = {"renderer": renderer.type(), "features": vl.featureCount(), "crs": vl.crs().authid()}
        if renderer.type() != "categorizedSymbol":
            print(f"default style not loaded: renderer is {renderer.type()!r}", file=sys.stderr)
            print(json.dumps(info))
            return 1
        info["field"] = renderer.classAttribute()
        info["categories"] = [
            {"value": c.value(), "label": c.label(), "color": list(c.symbol().color().getRgb()[:3])}
            for c in renderer.categories()
        ]
        settings = QgsMapSettings()
        settings.setLayers([vl])
        settings.setDestinationCrs(vl.crs())
        settings.setExtent(vl.extent())
        settings.setOutputSize(QSize(400, 400))
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererSequentialJob(settings)
        job.start()
        job.waitForFinished()
        if not job.renderedImage().save(png, "PNG"):
            print(f"could not save {png!r}", file=sys.stderr)
            return 1
        print(json.dumps(info))
        return 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    # skip QgsApplication.exitQgis(): with layers still referenced it can crash at
    # teardown on some builds, which would hide a good result
    os._exit(main(*sys.argv[1:]))

