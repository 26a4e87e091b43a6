"""Workflow files: malformed ones are refused with one clear message; fuzzing never gives a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoseg.cli import main as cli
from geoseg.errors import GeosegError
from geoseg.models import build_network, save
from geoseg.workflow import parse, resolve
from tests.helpers import make_card

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    seg = make_card(("blue", "green", "red", "nir", "swir16"), tile_size=128, halo=32, divisor=32, encoder="mobilenet_v2", name="seg")
    save(build_network(seg).eval(), seg, d)
    chg = make_card(("red", "nir"), time_steps=2, tile_size=128, halo=32, divisor=32, encoder="mobilenet_v2", name="chg",
                    classes=2).model_copy(update={"classes": make_card(classes=2).classes})
    save(build_network(chg).eval(), chg, d)
    return d


def base(models: Path) -> dict:
    return {
        "name": "t",
        "region": {"bbox": [2.315, 48.805, 2.350, 48.840]},
        "catalog": {"serve": str(REPO / "catalogs" / "demo"), "collections": ["sentinel-2-l1c"], "max_cloud_cover": 20},
        "dates": {"start": "2016-01-01", "end": "2017-12-31"},
        "models": {"segment": str(models / "seg.json")},
        "output": "out",
    }


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "wf.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def check(capsys, tmp_path, data, expect: str, code: int = 2):
    rc = cli(["validate", str(write(tmp_path, data))])
    err = capsys.readouterr().err
    assert rc == code, err
    first = err.splitlines()[0]
    assert first.startswith("error: ") and expect in first, err
    assert "Traceback" not in err


def test_the_valid_workflow_validates(models, tmp_path, capsys):
    assert cli(["validate", str(write(tmp_path, base(models)))]) == 0
    out = capsys.readouterr().out
    assert "is valid: 2 product(s)" in out


def test_shipped_workflows_parse():
    for path in (REPO / "workflows").glob("*.yaml"):
        spec = parse(path.read_text(), source=str(path))
        assert spec.name


MALFORMED = [
    ("unknown key", lambda d: d.update(colour="red"), "colour: unknown key"),
    ("nested unknown key", lambda d: d["catalog"].update(colections=["x"]), "catalog.colections: unknown key"),
    ("wrong type", lambda d: d["catalog"].update(max_cloud_cover="lots"), "catalog.max_cloud_cover"),
    ("cloud out of range", lambda d: d["catalog"].update(max_cloud_cover=150), "less than or equal to 100"),
    ("inverted dates", lambda d: d["dates"].update(start="2018-01-01"), "dates are inverted"),
    ("bad date", lambda d: d["dates"].update(end="2017-13-45"), "dates.end"),
    ("bad relative window", lambda d: d.update(dates={"last": "a while"}), "'last: a while' is not understood"),
    ("bad CRS", lambda d: d.update(grid={"crs": "EPSG:99999"}), "unknown CRS 'EPSG:99999'"),
    ("missing model file", lambda d: d["models"].update(segment="nope.json"), "models.segment 'nope.json' does not exist"),
    ("bi-temporal card as segment model", lambda d: d["models"].update(segment=d["models"]["segment"].replace("seg.json", "chg.json")),
     "models.segment: model 'chg' is not single-date"),
    ("region outside the catalog", lambda d: d.update(region={"bbox": [10.0, 50.0, 10.1, 50.1]}), "no item"),
    ("both catalog url and serve", lambda d: d["catalog"].update(url="http://x"), "exactly one of catalog.url"),
    ("missing output", lambda d: d.pop("output"), "output: Field required"),
    ("nothing to do", lambda d: d.pop("dates"), "nothing to do"),
    ("bbox of three numbers", lambda d: d.update(region={"bbox": [1, 2, 3]}), "region.bbox"),
    ("bad tiling override", lambda d: d.update(tiling={"tile_size": 100}), "tile_size 100 is not a multiple of size_divisor 32"),
    ("zero workers", lambda d: d.update(dask={"workers": 0}), "dask.workers"),
]


@pytest.mark.parametrize("name,mutate,expect", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_workflow_is_refused(models, tmp_path, capsys, name, mutate, expect):
    data = base(models)
    mutate(data)
    check(capsys, tmp_path, data, expect, code=3 if name == "region outside the catalog" else 2)


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    check(capsys, tmp_path, "name: x\nregion: {bbox: [1, 2\n", "line 3: not valid YAML")


def test_key_line_is_reported(models, tmp_path, capsys):
    text = yaml.safe_dump(base(models), sort_keys=False) + "typo_key: 1\n"
    n = text.count("\n")
    check(capsys, tmp_path, text, f"line {n}: typo_key: unknown key")


# -- fuzzing ---------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.dates().map(str),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = ["name", "region", "catalog", "dates", "change", "models", "grid", "tiling", "products", "output", "dask", "device",
        "bbox", "path", "layer", "url", "serve", "collections", "max_cloud_cover", "start", "end", "last", "before", "after",
        "segment", "change", "crs", "resolution", "tile_size", "halo", "workers"]


@st.composite
def mutated(draw, models):
    data = json.loads(json.dumps(base(models)))
    for _ in range(draw(st.integers(1, 4))):
        target = data
        path = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3))
        for key in path[:-1]:
            nxt = target.get(key) if isinstance(target, dict) else None
            if not isinstance(nxt, dict):
                break
            target = nxt
        if isinstance(target, dict):
            if draw(st.booleans()):
                target[path[-1]] = draw(values)
            else:
                target.pop(path[-1], None)
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_workflows_never_traceback(models, tmp_path, data):
    wf = data.draw(mutated(models))
    text = yaml.safe_dump(wf, sort_keys=False, allow_unicode=True)
    try:
        spec = parse(text)
        resolve(spec, base=tmp_path)
    except GeosegError as err:
        assert str(err).strip() and "Traceback" not in str(err)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_text_never_tracebacks(text):
    try:
        parse(text)
    except GeosegError:
        pass
