"""Train a band-aware segmentation or change model from a config.

:func:`train` runs the whole job: every check that can fail on bad input runs
before the first step (bands the data lacks, label values not in the config,
labels that miss the imagery, an empty class, a chip size the network cannot
take, train and validation scenes that overlap), then

* scenes are read onto their grids (:mod:`geoseg.scenes`) and held in memory;
* normalization statistics come from the valid pixels of the training scenes;
* training chips are drawn at random, a minimum share of them centred near a
  pixel of the rare class, and augmented (flips, 90-degree rotations, small
  per-band brightness / contrast jitter);
* validation runs on a regular grid of overlapping tiles over the held-out
  scenes (whole groups, so no pixel is shared), scored on the tile cores;
* AdamW with a one-cycle or cosine schedule; early stopping keeps the weights
  of the best validation epoch; the loss is a weighted sum of class-weighted
  cross-entropy, soft Dice and focal loss;
* CUDA with mixed precision when available, else CPU float32; a fixed seed
  makes a CPU run repeatable.

The result is ``NAME.safetensors`` + ``NAME.json`` (:func:`geoseg.models.save`)
whose card records the config, every input file with its sha256, the command,
the git commit and the training-loop validation scores. Reported scores come
from ``geoseg evaluate``, which runs the same tiled prediction users run.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from geoseg.cpunet import fastest_layout
from geoseg.errors import InputError
from geoseg.heap import keep_heap
from geoseg.labels import UNLABELLED, LabelError, LabelStats
from geoseg.metrics import confusion, monitor_value, scores
from geoseg.train_config import TrainConfig, load_train_config, resolve_root


class TrainError(InputError):
    """A training set-up that cannot work (checked before training starts)."""


# ------------------------------------------------------------------ data in memory

@dataclass(frozen=True)
class SceneArrays:
    """One scene held in memory for training or validation."""

    id: str
    group: str
    split: str
    """'train' or 'val'."""
    x: np.ndarray = field(repr=False)
    """(channels, y, x) float32 reflectance, dates stacked as channels (earlier first); NaN invalid."""
    y: np.ndarray = field(repr=False)
    """(y, x) uint8 class index; 255 where unlabelled or the input is invalid."""
    stats: LabelStats
    files: tuple[str, ...]
    footprint: object = field(repr=False)
    """odc-geo Geometry of the scene's grid."""


@dataclass(frozen=True)
class Split:
    """Scene ids per side; a group is never on both."""

    train: tuple[str, ...]
    val: tuple[str, ...]


def split_scenes(scenes: Sequence[tuple[str, str]], val_groups: Sequence[str]) -> Split:
    """Split ``(scene id, group)`` pairs: scenes of ``val_groups`` validate, the others train."""
    val_groups = set(val_groups)
    train = tuple(s for s, g in scenes if g not in val_groups)
    val = tuple(s for s, g in scenes if g in val_groups)
    groups_train = {g for s, g in scenes if s in train}
    groups_val = {g for s, g in scenes if s in val}
    assert not groups_train & groups_val
    if not train or not val:
        raise TrainError(f"the split leaves {len(train)} training and {len(val)} validation scene(s)",
                         fix="list in split.val_groups some, but not all, scene groups")
    return Split(train=train, val=val)


def check_disjoint(scenes: Sequence[SceneArrays]) -> None:
    """Refuse a training scene whose area overlaps a validation scene (shared pixels)."""
    train = [s for s in scenes if s.split == "train"]
    for v in (s for s in scenes if s.split == "val"):
        for t in train:
            a = v.footprint
            b = t.footprint.to_crs(a.crs)
            inter = a.intersection(b)
            if not inter.is_empty and inter.area > 0:
                raise TrainError(
                    f"validation scene {v.id!r} (group {v.group!r}) overlaps training scene {t.id!r} (group {t.group!r})",
                    fix=f"put both in one group (scene `group:`), so the split keeps them on one side",
                )


def _sha256(path: str) -> str | None:
    from geoseg.models import sha256_file

    return None if "://" in path else sha256_file(path)


def load_scenes(config: TrainConfig, root: Path, *, log: Callable[[str], None] = print) -> list[SceneArrays]:
    """Read every scene onto its grid; check labels and bands. Raises before any training."""
    from geoseg.scenes import label_files, open_scene, scene_labels

    labelmap = config.labelmap()
    val_groups = set(config.split.val_groups)
    out = []
    for sc in config.scenes:
        scene = sc.build(root)
        opened = open_scene(scene, config.bands, resolution=config.resolution, crs=config.crs)
        x = opened.stack.values.astype("float32")
        if x.ndim == 4:
            x = x.reshape(-1, *x.shape[2:])
        valid = np.isfinite(x).all(axis=0)
        if not valid.any():
            raise TrainError(f"scene {scene.id!r} has no valid pixel in every band", fix="check its nodata value and files")
        y = scene_labels(opened, labelmap, valid=valid)
        stats = LabelStats.of(y, len(config.classes))
        split = "val" if scene.group in val_groups else "train"
        out.append(SceneArrays(
            id=scene.id, group=scene.group, split=split, x=x, y=y, stats=stats,
            files=opened.files + label_files(scene), footprint=opened.geobox.extent,
        ))
        log(f"  {split:5s} {scene.id:24s} {x.shape[1]:5d} x {x.shape[2]:5d} px  " +
            "  ".join(f"{c.name} {n}" for c, n in zip(config.classes, stats.counts)))
    return out


def check_classes(config: TrainConfig, scenes: Sequence[SceneArrays]) -> np.ndarray:
    """Training pixel count per class; an empty class is an error."""
    counts = np.zeros(len(config.classes), dtype="int64")
    for s in scenes:
        if s.split == "train":
            counts += np.asarray(s.stats.counts)
    empty = [c.name for c, n in zip(config.classes, counts) if n == 0]
    if empty:
        raise LabelError(
            f"class{'es' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} never occur{'' if len(empty) > 1 else 's'} in the training labels",
            fix="check the classes' `values` against the label files, or drop the class from the config",
        )
    return counts


def normalization(scenes: Sequence[SceneArrays]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over the valid pixels of the training scenes (float64 sums)."""
    total = None
    for s in scenes:
        if s.split != "train":
            continue
        valid = np.isfinite(s.x).all(axis=0)
        v = s.x[:, valid].astype("float64")
        part = np.stack([np.full(v.shape[0], v.shape[1], dtype="float64"), v.sum(axis=1), (v * v).sum(axis=1)])
        total = part if total is None else total + part
    n, s1, s2 = total
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    return mean, np.maximum(std, 1e-6)


# ------------------------------------------------------------------ chips

class ChipSampler:
    """Random training chips: ``rare_share`` of each batch centred near rare-class pixels."""

    def __init__(self, scenes: Sequence[SceneArrays], chip: int, rare_class: int, rare_share: float,
                 min_labelled: float, rng: np.random.Generator):
        self.chip = chip
        self.rng = rng
        self.rare_share = rare_share
        self.min_labelled = min_labelled
        self.x, self.y = [], []
        for s in scenes:
            x, y = s.x, s.y
            ph, pw = max(0, chip - x.shape[1]), max(0, chip - x.shape[2])
            if ph or pw:
                x = np.pad(x, ((0, 0), (0, ph), (0, pw)), constant_values=np.nan)
                y = np.pad(y, ((0, ph), (0, pw)), constant_values=UNLABELLED)
            self.x.append(x)
            self.y.append(y)
        labelled = np.array([(y != UNLABELLED).sum() for y in self.y], dtype="float64")
        self.p_scene = labelled / labelled.sum()
        rare = [np.flatnonzero(y.ravel() == rare_class) for y in self.y]
        self.rare_counts = np.array([len(r) for r in rare], dtype="int64")
        self.rare = rare

    def _window(self, i: int, cy: int | None = None, cx: int | None = None) -> tuple[int, int]:
        h, w = self.y[i].shape
        c = self.chip
        if cy is None:
            return int(self.rng.integers(0, h - c + 1)), int(self.rng.integers(0, w - c + 1))
        oy, ox = self.rng.integers(c // 4, 3 * c // 4, size=2)
        return int(np.clip(cy - oy, 0, h - c)), int(np.clip(cx - ox, 0, w - c))

    def draw(self, rare: bool) -> tuple[np.ndarray, np.ndarray]:
        """One chip: centred near a random rare-class pixel, or anywhere with enough labels."""
        c = self.chip
        if rare and self.rare_counts.sum():
            i = int(self.rng.choice(len(self.y), p=self.rare_counts / self.rare_counts.sum()))
            flat = self.rare[i][self.rng.integers(len(self.rare[i]))]
            r, q = divmod(int(flat), self.y[i].shape[1])
            r0, c0 = self._window(i, r, q)
        else:
            for _ in range(20):
                i = int(self.rng.choice(len(self.y), p=self.p_scene))
                r0, c0 = self._window(i)
                if (self.y[i][r0:r0 + c, c0:c0 + c] != UNLABELLED).mean() >= self.min_labelled:
                    break
        return self.x[i][:, r0:r0 + c, c0:c0 + c], self.y[i][r0:r0 + c, c0:c0 + c]

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` chips, the first ``ceil(rare_share * n)`` centred near the rare class."""
        n_rare = math.ceil(self.rare_share * n) if self.rare_counts.sum() else 0
        xs, ys = zip(*(self.draw(k < n_rare) for k in range(n)))
        return np.stack(xs), np.stack(ys)


def augment(x: np.ndarray, y: np.ndarray, cfg, rng: np.random.Generator, time_steps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Flips, 90-degree rotations, per-band brightness / contrast jitter, per-date gain and date swaps of one batch (copies).

    ``x`` is (chip, channel, y, x) with the dates' bands stacked as channels, earlier first.
    """
    x = x.copy()
    y = y.copy()
    n, ch = x.shape[:2]
    nb = ch // time_steps
    if cfg.contrast or cfg.brightness:
        gain = 1 + rng.uniform(-cfg.contrast, cfg.contrast, size=(n, ch, 1, 1)).astype("float32")
        bias = rng.uniform(-cfg.brightness, cfg.brightness, size=(n, ch, 1, 1)).astype("float32")
        x = x * gain + bias
    if cfg.date_gain:
        g = 1 + rng.uniform(-cfg.date_gain, cfg.date_gain, size=(n, time_steps, 1, 1, 1)).astype("float32")
        x = (x.reshape(n, time_steps, nb, *x.shape[2:]) * g).reshape(x.shape)
    if cfg.swap_dates and time_steps == 2:
        swap = rng.random(n) < 0.5
        x[swap] = np.concatenate([x[swap, nb:], x[swap, :nb]], axis=1)
    for i in range(n):
        xi, yi = x[i], y[i]
        if cfg.rot90:
            k = int(rng.integers(4))
            xi, yi = np.rot90(xi, k, axes=(1, 2)), np.rot90(yi, k, axes=(0, 1))
        if cfg.flips:
            if rng.random() < 0.5:
                xi, yi = xi[:, :, ::-1], yi[:, ::-1]
            if rng.random() < 0.5:
                xi, yi = xi[:, ::-1, :], yi[::-1, :]
        x[i], y[i] = xi, yi
    return x, y


def prepare_batch(x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalize; invalid input -> 0 and its label -> unlabelled."""
    invalid = ~np.isfinite(x).all(axis=1)
    xn = (x - mean[None, :, None, None].astype("float32")) / std[None, :, None, None].astype("float32")
    xn = np.nan_to_num(xn, nan=0.0, posinf=0.0, neginf=0.0).astype("float32")
    y = np.where(invalid, UNLABELLED, y).astype("int64")
    return xn, y


# ------------------------------------------------------------------ loss

def class_weights(spec, counts: np.ndarray) -> np.ndarray | None:
    if spec == "none":
        return None
    if isinstance(spec, list):
        return np.asarray(spec, dtype="float64")
    f = counts / counts.sum()
    w = 1.0 / np.sqrt(np.maximum(f, 1e-12))
    return w / w.mean()


def make_loss(cfg, weights: np.ndarray | None, n_classes: int, device):
    import torch
    import torch.nn.functional as F

    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)

    def loss_fn(logits, target):
        logits = logits.float()
        total = logits.new_zeros(())
        valid = target != UNLABELLED
        if not valid.any():
            return total + 0.0 * logits.sum()
        if cfg.ce:
            total = total + cfg.ce * F.cross_entropy(logits, target, weight=w, ignore_index=UNLABELLED)
        if cfg.focal:
            logp = F.log_softmax(logits, dim=1)
            safe = target.clamp(max=n_classes - 1)
            lp = logp.gather(1, safe[:, None])[:, 0]
            pt = lp.exp()
            wt = w[safe] if w is not None else torch.ones_like(lp)
            fl = -((1 - pt) ** cfg.focal_gamma) * lp * wt
            total = total + cfg.focal * (fl[valid].sum() / wt[valid].sum())
        if cfg.dice:
            p = logits.softmax(dim=1)
            m = valid[:, None].float()
            onehot = F.one_hot(target.clamp(max=n_classes - 1), n_classes).permute(0, 3, 1, 2).float() * m
            p = p * m
            inter = (p * onehot).sum(dim=(0, 2, 3))
            den = p.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
            dice = 1 - (2 * inter + 1.0) / (den + 1.0)
            total = total + cfg.dice * dice.mean()
        return total

    return loss_fn


# ------------------------------------------------------------------ validation

def predict_tiles(net, x: np.ndarray, mean, std, *, tile: int, halo: int, batch_size: int, device, amp: bool) -> np.ndarray:
    """Class index per pixel of a whole scene, from overlapping tiles (cores kept)."""
    import torch

    ch, h, w = x.shape
    core = tile - 2 * halo
    ny, nx = math.ceil(h / core), math.ceil(w / core)
    xn = (x - mean[:, None, None]) / std[:, None, None]
    xn = np.nan_to_num(xn.astype("float32"), nan=0.0)
    pad = np.zeros((ch, ny * core + 2 * halo, nx * core + 2 * halo), dtype="float32")
    pad[:, halo:halo + h, halo:halo + w] = xn
    out = np.zeros((ny * core, nx * core), dtype="uint8")
    windows = [(iy, ix) for iy in range(ny) for ix in range(nx)]
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        for k in range(0, len(windows), batch_size):
            part = windows[k:k + batch_size]
            xb = np.stack([pad[:, iy * core:iy * core + tile, ix * core:ix * core + tile] for iy, ix in part])
            logits = net(torch.from_numpy(xb).to(device))
            pred = logits.argmax(dim=1).cpu().numpy().astype("uint8")
            for (iy, ix), p in zip(part, pred):
                out[iy * core:(iy + 1) * core, ix * core:(ix + 1) * core] = p[halo:halo + core, halo:halo + core]
    return out[:h, :w]


def validate(net, scenes: Sequence[SceneArrays], mean, std, config: TrainConfig, device, amp: bool) -> dict:
    names = [c.name for c in config.classes]
    cm = np.zeros((len(names), len(names)), dtype="int64")
    halo = min(config.inference.halo, (config.sampling.val_tile // 2) - 1)
    net.eval()
    for s in scenes:
        pred = predict_tiles(net, s.x, mean, std, tile=config.sampling.val_tile, halo=max(0, halo),
                             batch_size=config.sampling.batch_size, device=device, amp=amp)
        valid = np.isfinite(s.x).all(axis=0)
        cm += confusion(np.where(valid, s.y, UNLABELLED), pred, len(names))
    net.train()
    return scores(cm, names)


# ------------------------------------------------------------------ provenance

def git_state(root: Path) -> dict:
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "dirty": None}


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _rel(path: str, root: Path) -> str:
    if "://" in path:
        return path
    try:
        return os.path.relpath(Path(path).resolve(), root)
    except ValueError:
        return str(path)


# ------------------------------------------------------------------ the job

@dataclass(frozen=True)
class TrainResult:
    card_path: Path
    weights_path: Path
    history: tuple[dict, ...]
    best_epoch: int
    best_score: float
    wall_s: float


def pick_device(device: str | None):
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}", fix="use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available", fix="use --device cpu")
    return dev


def _nearest_multiples(n: int, d: int) -> str:
    lo = n // d * d
    return f"{lo} or {lo + d}" if lo > 0 else f"{d}"


def train(
    config: TrainConfig | str | Path,
    out_dir: str | Path | None = None,
    *,
    root: str | Path | None = None,
    device: str | None = None,
    command: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train the model ``config`` describes; write ``NAME.safetensors`` + ``NAME.json`` to ``out_dir``.

    ``config`` is a :class:`TrainConfig` or the path of its YAML (then relative
    paths resolve against its ``root``, and ``out_dir`` defaults to the YAML's
    directory). ``command`` is recorded in the card (default: this process's
    command line). ``threads`` sets torch's CPU threads (1 is much faster than 2
    on a machine other jobs keep busy).
    """
    import torch
    from tqdm.auto import tqdm

    from geoseg.models import ClassInfo, ModelCard, Normalization, build_network, save

    t_start = time.time()
    keep_heap()  # each step frees and reallocates its activations (see geoseg.heap): ~8 % faster on the CPU
    config_path = None
    if not isinstance(config, TrainConfig):
        config_path = Path(config)
        config = load_train_config(config_path)
        root = resolve_root(config_path, config.root) if root is None else Path(root)
        out_dir = config_path.parent if out_dir is None else out_dir
    root = Path.cwd() if root is None else Path(root)
    if out_dir is None:
        raise InputError("no output directory", fix="pass out_dir (CLI: --out DIR)")
    out_dir = Path(out_dir)
    dev = pick_device(device)
    amp = dev.type == "cuda"
    if threads:
        torch.set_num_threads(int(threads))
    n_classes = len(config.classes)
    in_ch = len(config.bands) * config.time_steps

    # -- the network first: a bad architecture or chip size fails in a second
    torch.manual_seed(config.seed)
    np_rng = np.random.default_rng(config.seed)
    classes = tuple(ClassInfo(id=c.id if c.id is not None else i, name=c.name, color=tuple(c.color)) for i, c in enumerate(config.classes))
    draft = ModelCard(
        name=config.name, version=config.version, task=config.task, architecture=config.network.architecture,
        encoder=config.network.encoder, architecture_kwargs=dict(config.network.kwargs), bands=tuple(config.bands),
        time_steps=config.time_steps, normalization=Normalization(mean=(0.0,) * in_ch, std=(1.0,) * in_ch),
        classes=classes, resolution=config.resolution, tile_size=config.inference.tile_size, halo=config.inference.halo,
        cpu_memory_format="contiguous" if config.inference.cpu_memory_format == "auto" else config.inference.cpu_memory_format,
        size_divisor=1, weights=f"{config.name}.safetensors",
    )
    net = build_network(draft)
    divisor = int(getattr(getattr(net, "encoder", None), "output_stride", 32) or 32)
    for what, size in (("sampling.chip_size", config.sampling.chip_size), ("sampling.val_tile", config.sampling.val_tile),
                       ("inference.tile_size", config.inference.tile_size)):
        if size % divisor:
            raise TrainError(
                f"{what} {size} is not a multiple of {divisor}, which {config.network.architecture}/{config.network.encoder} needs",
                fix=f"use {_nearest_multiples(size, divisor)}",
            )

    # -- data, with every label / band / overlap check
    log(f"loading {len(config.scenes)} scene(s) ({len(config.bands)} bands x {config.time_steps} date(s), {config.resolution:g} m)")
    split_scenes([(s.id, s.group_name) for s in config.scenes], config.split.val_groups)
    scenes = load_scenes(config, root, log=log)
    check_disjoint(scenes)
    counts = check_classes(config, scenes)
    train_sc = [s for s in scenes if s.split == "train"]
    val_sc = [s for s in scenes if s.split == "val"]
    names = [c.name for c in config.classes]
    rare = names.index(config.sampling.rare_class) if config.sampling.rare_class else int(np.argmin(counts))
    mean, std = normalization(scenes)
    weights = class_weights(config.loss.class_weights, counts)
    log(f"training pixels per class: " + ", ".join(f"{n} {c}" for n, c in zip(names, counts.tolist()))
        + f"; rare class {names[rare]!r}; class weights {None if weights is None else np.round(weights, 3).tolist()}")

    # -- optimisation
    net.to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    steps = config.sampling.steps_per_epoch
    total_steps = config.optim.epochs * steps
    if config.optim.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.optim.lr, total_steps=total_steps, pct_start=0.15)
    elif config.optim.schedule == "cosine":
        warm = max(1, int(0.05 * total_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / max(1, total_steps - warm))))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = make_loss(config.loss, weights, n_classes, dev)
    sampler = ChipSampler(train_sc, config.sampling.chip_size, rare, config.sampling.rare_share, config.sampling.min_labelled, np_rng)

    history: list[dict] = []
    best_score, best_epoch, best_state, best_val = -1.0, 0, None, None
    bad = 0
    tty = sys.stderr.isatty()
    bar = tqdm(total=total_steps, desc=config.name, unit="step", disable=not progress, mininterval=0.5 if tty else 30,
               file=sys.stderr, dynamic_ncols=True)
    t_train = time.time()
    try:
        for epoch in range(1, config.optim.epochs + 1):
            losses = []
            for _ in range(steps):
                xb, yb = sampler.batch(config.sampling.batch_size)
                xb, yb = augment(xb, yb, config.augment, np_rng, config.time_steps)
                xb, yb = prepare_batch(xb, yb, mean, std)
                xt, yt = torch.from_numpy(xb).to(dev), torch.from_numpy(yb).to(dev)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                    logits = net(xt)
                loss = loss_fn(logits, yt)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", val=f"{max(best_score, 0):.3f}", refresh=False)
            val = validate(net, val_sc, mean, std, config, dev, amp)
            score = monitor_value(val, config.optim.monitor)
            improved = score > best_score + 1e-6
            if improved:
                best_score, best_epoch, best_val, bad = score, epoch, val, 0
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), config.optim.monitor: score,
                            "lr": float(sched.get_last_lr()[0]), "elapsed_s": round(time.time() - t_train, 1)})
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", val=f"{score:.3f}", best=f"{best_score:.3f}@{best_epoch}", refresh=True)
            log(f"epoch {epoch:3d}/{config.optim.epochs}  loss {np.mean(losses):.4f}  val {config.optim.monitor} {score:.4f}"
                f"  best {best_score:.4f} @ {best_epoch}  ({time.time() - t_train:.0f} s)")
            if bad >= config.optim.patience:
                log(f"early stop: no improvement in {bad} epochs")
                break
    finally:
        bar.close()
    wall_train = time.time() - t_train
    net.load_state_dict(best_state)
    net.eval().cpu()

    # -- card
    if command is None:
        argv = [Path(sys.argv[0]).name] + sys.argv[1:]
        command = " ".join(argv)
    import segmentation_models_pytorch as smp
    from geoseg import __version__

    data = []
    for s in scenes:
        data.append({"scene": s.id, "group": s.group, "split": s.split, "grid": list(s.x.shape[1:]),
                     "pixels_per_class": dict(zip(names, s.stats.counts)),
                     "files": [{"path": _rel(f, root), "sha256": _sha256(f)} for f in s.files]})
    from geoseg.train_config import RuleLabelsConfig

    rules = sorted({sc.labels.build().describe() for sc in config.scenes if isinstance(sc.labels, RuleLabelsConfig)})
    default_note = ("WEAK SUPERVISION: labels derived from the imagery by a rule (see label_rules)" if rules
                    else "labels from the label files listed under data")
    provenance = {
        "description": config.description,
        "labels": config.labels_note or default_note,
        "label_rules": rules,
        "label_values": config.labelmap().describe(),
        "command": command,
        "config_file": None if config_path is None else _rel(str(config_path), root),
        "config_sha256": None if config_path is None else _sha256(str(config_path)),
        "config": config.model_dump(mode="json"),
        "git": git_state(root),
        "software": {"geoseg": __version__, "torch": torch.__version__, "segmentation_models_pytorch": smp.__version__,
                     "python": platform.python_version()},
        "training": {"device": str(dev), "mixed_precision": amp, "threads": torch.get_num_threads(), "seed": config.seed,
                     "epochs_run": len(history), "best_epoch": best_epoch, "steps_per_epoch": steps,
                     "wall_s": round(time.time() - t_start, 1), "train_loop_s": round(wall_train, 1),
                     "normalization": f"mean/std over {int(sum((np.isfinite(s.x).all(axis=0)).sum() for s in train_sc))} valid pixels of the training scenes",
                     "class_weights": None if weights is None else weights.round(4).tolist(), "rare_class": names[rare]},
        "split": {"train": [s.id for s in train_sc], "val": [s.id for s in val_sc], "val_groups": list(config.split.val_groups)},
        "validation": {"source": "training loop: tiled prediction of the validation scenes at the best epoch (not the reported scores; those come from `geoseg evaluate`)",
                       "monitor": config.optim.monitor, "best": best_score, "scores": best_val},
        "history": history,
        "data": data,
    }
    layout, layout_note = draft.cpu_memory_format, "set in the config"
    if config.inference.cpu_memory_format == "auto":
        layout, seconds = fastest_layout(net, in_ch, config.inference.tile_size)
        layout_note = f"measured here, one {config.inference.tile_size}² tile on one CPU thread: " + \
            ", ".join(f"{k} {v:g} s" for k, v in seconds.items())
        log(f"CPU inference layout: {layout} ({layout_note})")
    provenance["cpu_memory_format"] = f"{layout}: {layout_note}"
    card = draft.model_copy(update={
        "normalization": Normalization(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std)),
        "size_divisor": divisor,
        "cpu_memory_format": layout,
        "provenance": _json_safe(provenance),
    })
    card = ModelCard.model_validate(card.model_dump())
    card_path = save(net, card, out_dir, half=config.network.half)
    weights_path = out_dir / f"{config.name}.safetensors"
    log(f"wrote {card_path} and {weights_path} ({weights_path.stat().st_size / 1e6:.1f} MB); best {config.optim.monitor} "
        f"{best_score:.4f} at epoch {best_epoch}; {time.time() - t_start:.0f} s")
    return TrainResult(card_path=card_path, weights_path=weights_path, history=tuple(history), best_epoch=best_epoch,
                       best_score=best_score, wall_s=time.time() - t_start)
