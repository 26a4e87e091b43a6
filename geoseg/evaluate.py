"""Score a model on labelled scenes, through the same tiled path users run.

For each scene, the imagery is loaded onto the model's grid
(:func:`geoseg.scenes.open_scene`), predicted with :func:`geoseg.inference.predict`
and :func:`geoseg.inference.classify` (full scene, tiled and stitched: no chips),
and compared with the labels read onto the same grid. The confusion matrix is
accumulated block by block of the lazy prediction, so memory is bounded by a
block, not the scene. Unlabelled pixels are never counted; labelled pixels
without a prediction (invalid input) are counted apart, as ``unscored``.

Optional baselines (a plain spectral-index rule such as MNDWI > 0) are scored
on exactly the same pixels, so "does the model beat the rule?" is a like-for-like
comparison. Per scene and pooled over all scenes: per-class IoU, F1, precision,
recall and the confusion matrix (:mod:`geoseg.metrics`), written as JSON and as
a Markdown table.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import dask
import numpy as np

from geoseg.errors import InputError
from geoseg.labels import UNLABELLED, LabelMap
from geoseg.metrics import confusion, scores
from geoseg.train_config import EvalConfig, load_eval_config, resolve_root


class EvaluationError(InputError):
    """An evaluation set-up that does not fit the model."""


@dataclass(frozen=True)
class Baseline:
    """A binary index rule standing in for a model: positives -> one class, negatives -> the other."""

    name: str
    rule: object  # geoseg.labels.IndexRule
    positive: int
    negative: int


def _sum(parts):
    cm = parts[0][0].copy()
    unscored = parts[0][1]
    for c, u in parts[1:]:
        cm += c
        unscored += u
    return cm, unscored


def _block_confusion(pred: np.ndarray, truth: np.ndarray, lut: np.ndarray, n: int, keep: np.ndarray | None):
    idx = lut[pred]
    labelled = truth != UNLABELLED
    if keep is not None:
        labelled &= keep
    unscored = int((labelled & (idx == UNLABELLED)).sum())
    return confusion(np.where(labelled, truth, UNLABELLED), idx, n), unscored


def streaming_confusion(pred, truth: np.ndarray, lut: np.ndarray, n: int, keep: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Confusion matrix of a lazy class-id raster against class-index labels, block by block.

    ``pred``: (y, x) DataArray or dask array of class ids; ``lut`` maps ids to
    class indices (255 = no prediction); ``truth``: (y, x) class indices (255 =
    unlabelled); ``keep``: optional mask of the pixels to score. Returns the
    matrix and the number of labelled pixels without a prediction.
    """
    import dask.array as dsa

    data = pred.data if hasattr(pred, "dims") else pred
    if not isinstance(data, dsa.Array):
        data = dsa.from_array(np.asarray(data), chunks=1024)
    if tuple(data.shape) != tuple(truth.shape):
        raise EvaluationError(f"prediction {tuple(data.shape)} and labels {tuple(truth.shape)} are not on one grid", fix="read both onto the scene's grid")
    ys = np.cumsum((0,) + data.chunks[0])
    xs = np.cumsum((0,) + data.chunks[1])
    parts = []
    for iy in range(len(ys) - 1):
        for ix in range(len(xs) - 1):
            sl = (slice(ys[iy], ys[iy + 1]), slice(xs[ix], xs[ix + 1]))
            parts.append(dask.delayed(_block_confusion, pure=True)(
                data.blocks[iy, ix], truth[sl], lut, n, None if keep is None else keep[sl]))
    cm, unscored = dask.delayed(_sum)(parts).compute()
    return cm, unscored


def _labelmap(config: EvalConfig, class_names: Sequence[str]) -> LabelMap:
    values = []
    for c in config.classes:
        if c.name not in class_names:
            raise EvaluationError(f"eval config names class {c.name!r}, which the model does not have", fix="use the card's class names: " + ", ".join(class_names))
        values += [(v, class_names.index(c.name)) for v in c.values]
    seen = [v for v, _ in values]
    dupes = sorted({v for v in seen if seen.count(v) > 1})
    if dupes:
        raise EvaluationError(f"label values {dupes} are given for two classes", fix="give each label value to one class")
    return LabelMap(class_names=tuple(class_names), values=tuple(values), ignore=frozenset(config.ignore_values))


def _baselines(config: EvalConfig, class_names: Sequence[str]) -> list[Baseline]:
    out = []
    for b in config.baselines:
        if len(class_names) != 2:
            raise EvaluationError(f"baseline {b.name!r} is a binary rule but the model has {len(class_names)} classes", fix="use baselines with two-class models only")
        if b.positive_class not in class_names:
            raise EvaluationError(f"baseline {b.name!r}: positive_class {b.positive_class!r} is not a class of the model", fix="use one of: " + ", ".join(class_names))
        pos = class_names.index(b.positive_class)
        out.append(Baseline(name=b.name, rule=b.build(), positive=pos, negative=1 - pos))
    return out


def _baseline_prediction(baseline: Baseline, opened) -> np.ndarray:
    from geoseg.scenes import open_scene

    stack = opened.stack if "time" not in opened.stack.dims else opened.stack.isel(time=0)
    names = set(stack.band.values.tolist())
    if not set(baseline.rule.bands) <= names:
        stack = open_scene(opened.scene, baseline.rule.bands, geobox=opened.geobox).stack
    raw = baseline.rule.apply({b: stack.sel(band=b).values for b in baseline.rule.bands})
    out = np.full(raw.shape, UNLABELLED, dtype="uint8")
    out[raw == 1] = baseline.positive
    out[raw == 0] = baseline.negative
    return out


def _sha256(path: str) -> str | None:
    from geoseg.models import sha256_file

    return None if "://" in path or not Path(path).exists() else sha256_file(path)


def evaluate(
    model: str | Path,
    config: EvalConfig | str | Path,
    *,
    root: str | Path | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Score ``model`` (a card path) on the scenes of ``config``; return the report (JSON-ready dict)."""
    import torch

    from geoseg.models import load, read_card
    from geoseg.inference import classify, predict
    from geoseg.scenes import label_files, open_scene, scene_labels

    t0 = time.time()
    config_path = None
    if not isinstance(config, EvalConfig):
        config_path = Path(config)
        config = load_eval_config(config_path)
        root = resolve_root(config_path, config.root) if root is None else root
    root = Path.cwd() if root is None else Path(root)
    card_path = Path(model).with_suffix(".json")
    card = read_card(card_path)
    names = [c.name for c in card.classes]
    n = len(names)
    labelmap = _labelmap(config, names)
    baselines = _baselines(config, names)
    lut = np.full(256, UNLABELLED, dtype="uint8")
    for i, cid in enumerate(card.class_ids):
        lut[cid] = i
    loaded = load(card_path, device="cpu")
    batch_size = batch_size or config.batch_size

    scene_reports = []
    pooled = {"model": np.zeros((n, n), dtype="int64"), **{b.name: np.zeros((n, n), dtype="int64") for b in baselines}}
    files: list[str] = []
    for sc in config.scenes:
        scene = sc.build(root)
        if len(scene.dates) != card.time_steps:
            raise EvaluationError(f"scene {scene.id!r} has {len(scene.dates)} date(s) but model {card.name!r} takes {card.time_steps}",
                                  fix="give each scene as many dates as the model's time_steps")
        ts = time.time()
        opened = open_scene(scene, card.bands, resolution=card.resolution)
        truth = scene_labels(opened, labelmap)
        keep = None
        base_preds = {}
        for b in baselines:
            bp = _baseline_prediction(b, opened)
            base_preds[b.name] = bp
            keep = (bp != UNLABELLED) if keep is None else keep & (bp != UNLABELLED)
        probs = predict(opened.stack, loaded, device=device, batch_size=batch_size)
        classes, _ = classify(probs, card)
        if keep is not None:
            # score every method on the same pixels: those the model predicts too
            pred_np = classes.values
            keep &= lut[pred_np] != UNLABELLED
            cm, unscored = streaming_confusion(pred_np, truth, lut, n, keep)
        else:
            cm, unscored = streaming_confusion(classes, truth, lut, n)
        labelled = int((truth != UNLABELLED).sum())
        rep = {"id": scene.id, "grid": {"shape": list(opened.geobox.shape.yx), "crs": str(opened.geobox.crs),
                                          "resolution": card.resolution},
               "labelled_pixels": labelled, "unscored_pixels": labelled - int(cm.sum()),
               "model": scores(cm, names), "baselines": {}}
        pooled["model"] += cm
        ident = np.arange(256, dtype="uint8")
        for b in baselines:
            bcm, _ = streaming_confusion(base_preds[b.name], truth, ident, n, keep)
            rep["baselines"][b.name] = scores(bcm, names)
            pooled[b.name] += bcm
        scene_reports.append(rep)
        files += list(opened.files) + list(label_files(scene))
        f1s = ", ".join(f"{k} F1 {v['f1']:.4f}" if v["f1"] is not None else f"{k} F1 -" for k, v in rep["model"]["per_class"].items())
        log(f"  {scene.id}: {labelled} labelled px, {rep['unscored_pixels']} unscored; {f1s}  ({time.time() - ts:.0f} s)")
    report = {
        "title": config.title or f"{card.name} evaluation",
        "model": {"name": card.name, "version": card.version, "card": str(card_path), "weights_sha256": card.weights_sha256,
                  "architecture": f"{card.architecture}/{card.encoder}", "bands": list(card.bands), "time_steps": card.time_steps},
        "command": command,
        "eval_config": None if config_path is None else str(config_path),
        "eval_config_sha256": None if config_path is None else _sha256(str(config_path)),
        "method": (f"geoseg.inference.predict + classify on each full scene (tile {card.tile_size}, halo {card.halo}, "
                   f"{card.resolution:g} m grid in the scene's UTM zone); labels read onto the same grid (nearest); "
                   "unlabelled pixels excluded; confusion rows = truth, columns = prediction"),
        "classes": names,
        "label_values": labelmap.describe(),
        "baselines": {b.name: b.rule.describe() for b in baselines},
        "scenes": scene_reports,
        "overall": {"model": scores(pooled["model"], names), "baselines": {b.name: scores(pooled[b.name], names) for b in baselines}},
        "files": [{"path": f, "sha256": _sha256(f)} for f in dict.fromkeys(files)],
        "software": {"torch": torch.__version__, "threads": torch.get_num_threads()},
        "wall_s": round(time.time() - t0, 1),
    }
    return report


# ------------------------------------------------------------------ writers

def _f(v) -> str:
    return "–" if v is None else f"{v:.4f}"


def markdown(report: dict) -> str:
    """The report as Markdown: per-class score tables (scenes and pooled), confusion matrices."""
    names = report["classes"]
    methods = ["model"] + list(report["baselines"])
    lines = [f"# {report['title']}", ""]
    m = report["model"]
    lines += [f"Model `{m['name']}` {m['version']} ({m['architecture']}, bands {', '.join(m['bands'])}"
              + (f" x {m['time_steps']} dates" if m["time_steps"] > 1 else "") + f"), weights sha256 `{(m['weights_sha256'] or '')[:16]}…`.", ""]
    if report.get("command"):
        lines += ["Reproduce:", "", "```bash", report["command"], "```", ""]
    lines += [f"Method: {report['method']}.", "", f"Label values: {report['label_values']}.", ""]
    for name, desc in report["baselines"].items():
        lines += [f"Baseline **{name}**: {desc}; scored on the same pixels as the model.", ""]
    show = names if len(names) > 2 else names[1:] + names[:1]
    for cname in show:
        lines += [f"## Class `{cname}`", "", "| scene | method | IoU | F1 | precision | recall | true px | predicted px |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        rows = [(s["id"], s) for s in report["scenes"]] + [("**overall (pooled)**", report["overall"])]
        for label, s in rows:
            for meth in methods:
                sc = s["model"] if meth == "model" else s["baselines"][meth]
                c = sc["per_class"][cname]
                lines.append(f"| {label} | {'model' if meth == 'model' else meth} | {_f(c['iou'])} | {_f(c['f1'])} | {_f(c['precision'])} | "
                             f"{_f(c['recall'])} | {c['support']} | {c['predicted']} |")
        lines.append("")
    lines += ["## Pooled confusion matrices (rows: truth, columns: prediction)", ""]
    for meth in methods:
        sc = report["overall"]["model"] if meth == "model" else report["overall"]["baselines"][meth]
        lines += [f"**{meth}** (accuracy {_f(sc['accuracy'])}, mean IoU {_f(sc['mean_iou'])})", "",
                  "| truth \\ prediction | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for name, row in zip(names, sc["confusion"]):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    unscored = sum(s["unscored_pixels"] for s in report["scenes"])
    lines += [f"Labelled pixels without a prediction (invalid input) or without a baseline decision, not scored: {unscored}.", ""]
    return "\n".join(lines)


def write_report(report: dict, json_path: str | Path, md_path: str | Path) -> tuple[Path, Path]:
    from geoseg.io import atomic_path

    json_path, md_path = Path(json_path), Path(md_path)
    with atomic_path(json_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_path(md_path, overwrite=True) as tmp:
        tmp.write_text(markdown(report))
    return json_path, md_path


def report_paths(out_dir: Path, config_path: Path | None, model_name: str) -> tuple[Path, Path]:
    """``X.eval.json`` / ``X.eval.md`` for config ``X.eval.yaml`` (or ``X.yaml``); ``NAME.eval.*`` without a config."""
    if config_path is not None:
        stem = config_path.name
        for suffix in (".yaml", ".yml"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        stem = stem[:-5] if stem.endswith(".eval") else stem
    else:
        stem = model_name
    return out_dir / f"{stem}.eval.json", out_dir / f"{stem}.eval.md"


__all__ = ["evaluate", "streaming_confusion", "markdown", "write_report", "report_paths", "EvaluationError"]
