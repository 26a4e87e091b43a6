"""The validation split never shares a city (group) or a pixel with training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from odc.geo.geom import box

from geoseg.train import SceneArrays, Split, TrainError, check_disjoint, split_scenes
from geoseg.labels import LabelStats
from geoseg.train_config import load_eval_config, load_train_config

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcdefgh"), min_size=2, max_size=30), st.sets(st.sampled_from("abcdefgh"), min_size=1))
def test_split_never_shares_a_group(groups, val_groups):
    scenes = [(f"s{i}", g) for i, g in enumerate(groups)]
    if not (set(groups) & val_groups) or not (set(groups) - val_groups):
        with pytest.raises(TrainError):
            split_scenes(scenes, val_groups)
        return
    split = split_scenes(scenes, val_groups)
    group_of = dict(scenes)
    assert isinstance(split, Split)
    assert sorted(split.train + split.val) == sorted(s for s, _ in scenes)
    assert not {group_of[s] for s in split.train} & {group_of[s] for s in split.val}
    assert {group_of[s] for s in split.val} <= val_groups


def _scene(id_, group, split, bbox):
    return SceneArrays(id=id_, group=group, split=split, x=np.zeros((1, 2, 2), "float32"), y=np.zeros((2, 2), "uint8"),
                       stats=LabelStats((4, 0), 0), files=(), footprint=box(*bbox, crs="EPSG:32631"))


def test_overlapping_train_and_val_scenes_are_refused():
    a = _scene("paris", "paris", "val", (0, 0, 1000, 1000))
    b = _scene("bercy", "bercy", "train", (900, 900, 2000, 2000))  # shares pixels with paris
    c = _scene("nantes", "nantes", "train", (1000, 0, 2000, 1000))  # touches, shares no pixel
    check_disjoint([a, c])
    with pytest.raises(TrainError, match="validation scene 'paris' .* overlaps training scene 'bercy'") as e:
        check_disjoint([a, b, c])
    assert "group" in str(e.value.fix)


@pytest.mark.parametrize("name", ["oscd-urban-change", "s2-water"])
def test_shipped_configs_split_by_city(name):
    cfg = load_train_config(MODELS / f"{name}.train.yaml")
    split = split_scenes([(s.id, s.group_name) for s in cfg.scenes], cfg.split.val_groups)
    group_of = {s.id: s.group_name for s in cfg.scenes}
    assert not {group_of[s] for s in split.train} & {group_of[s] for s in split.val}
    # every scene of a city is in the same group (the city): a city's two dates never straddle the split
    for s in cfg.scenes:
        assert s.group_name == s.id.split("-")[0]


def test_oscd_held_out_cities_are_not_in_training():
    train = load_train_config(MODELS / "oscd-urban-change.train.yaml")
    held_out = load_eval_config(MODELS / "oscd-urban-change.eval.yaml")
    used = " ".join(str(d) for s in train.scenes for d in s.dates) + " ".join(str(s.labels) for s in train.scenes)
    for s in held_out.scenes:
        assert s.id not in {t.id for t in train.scenes}
        assert f"/{s.id}/" not in used
