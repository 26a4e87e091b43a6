"""The two shipped models: loadable, small, made by the config in the repository,
and their published scores are what `geoseg evaluate` gives today."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from geoseg.models import load, sha256_file
from geoseg.train_config import TrainConfig, load_train_config

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
DATA = REPO.parent / "shared" / "data"
NAMES = ["oscd-urban-change", "s2-water"]


def _shipped(name: str) -> Path:
    card = MODELS / f"{name}.json"
    if not card.exists():
        pytest.skip(f"{card} not built yet")
    return card


@pytest.mark.parametrize("name", NAMES)
def test_card_weights_and_config(name):
    card_path = _shipped(name)
    model = load(card_path)  # validates the card and the weights' sha256, loads strictly
    card = model.card
    assert (MODELS / card.weights).stat().st_size <= 30e6
    prov = card.provenance
    assert prov["command"].startswith(f"geoseg train models/{name}.train.yaml --out models")
    # the config in the repository is the one that trained the shipped weights
    # (read through today's schema, which fills keys added since with defaults that reproduce the old behaviour)
    recorded = TrainConfig.model_validate(prov["config"]).model_dump(mode="json")
    assert recorded == load_train_config(MODELS / f"{name}.train.yaml").model_dump(mode="json")
    assert prov["data"] and all(f["sha256"] for d in prov["data"] for f in d["files"])
    assert {d["split"] for d in prov["data"]} == {"train", "val"}
    train_groups = {d["group"] for d in prov["data"] if d["split"] == "train"}
    val_groups = {d["group"] for d in prov["data"] if d["split"] == "val"}
    assert not train_groups & val_groups
    assert card.tile_size % card.size_divisor == 0
    if name == "s2-water":
        assert "WEAK SUPERVISION" in prov["labels"] and prov["label_rules"]


def _readme_row(text: str, name: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith(f"| `{name}`"))
    return [c.strip() for c in row.strip("|").split("|")]


@pytest.mark.parametrize("name", NAMES)
def test_published_scores_match_the_eval_report(name):
    card_path = _shipped(name)
    report_path = MODELS / f"{name}.eval.json"
    if not report_path.exists():
        pytest.skip("not evaluated yet")
    report = json.loads(report_path.read_text())
    card = json.loads(card_path.read_text())
    assert report["model"]["weights_sha256"] == card["weights_sha256"]
    assert report["command"] == f"geoseg evaluate models/{name}.json --config models/{name}.eval.yaml"
    positive = "change" if name == "oscd-urban-change" else "water"
    overall = report["overall"]["model"]["per_class"][positive]
    for readme in (REPO / "README.md", MODELS / "README.md"):
        cells = _readme_row(readme.read_text(), name)
        numbers = [float(x) for x in re.findall(r"\d\.\d{3}", " ".join(cells))]
        assert [round(overall[k], 3) for k in ("f1", "precision", "recall", "iou")] == numbers[:4], readme
    if name == "s2-water":
        rule = report["overall"]["baselines"]["MNDWI > 0 (plain index rule)"]["per_class"]["water"]
        assert overall["f1"] >= rule["f1"] and overall["iou"] >= rule["iou"]


@pytest.mark.parametrize("name", [pytest.param("oscd-urban-change", marks=pytest.mark.slow), "s2-water"])
def test_rerunning_evaluate_gives_the_published_numbers(name, tmp_path, monkeypatch):
    card_path = _shipped(name)
    if not DATA.is_dir():
        pytest.skip("../shared/data not found")
    shipped = json.loads((MODELS / f"{name}.eval.json").read_text())
    from geoseg.cli import main

    monkeypatch.chdir(REPO)
    assert main(["evaluate", f"models/{name}.json", "--config", f"models/{name}.eval.yaml", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / f"{name}.eval.json").read_text())
    assert again["overall"] == shipped["overall"]
    assert [s["model"] for s in again["scenes"]] == [s["model"] for s in shipped["scenes"]]
    assert sha256_file(card_path.with_suffix(".safetensors")) == shipped["model"]["weights_sha256"]
