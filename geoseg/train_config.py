"""Training and evaluation configurations: YAML in, validated data out.

The YAML is validated once, here, by pydantic models that forbid unknown keys
and describe every field (``python -c "from geoseg.train_config import
TrainConfig; print(TrainConfig.model_json_schema())"`` prints them all). Errors
name the file, line and key. :meth:`SceneConfig.build` and friends then turn the
validated data into the plain frozen records of :mod:`geoseg.scenes`; nothing
past this module sees pydantic.

Relative paths are resolved against ``root``, which is itself relative to the
config file (default: the directory the command runs in). Top-level keys that
start with ``x-`` are ignored: they hold YAML anchors (``x-rule: &rule {...}``)
that other keys reuse (``labels: *rule``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from geoseg.cpunet import Layout
from geoseg.errors import InputError

_VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb")


class ConfigError(InputError):
    """A configuration file that is missing, not YAML, or not valid; exit code 2."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------ imagery

class RasterSourceConfig(_Strict):
    """Imagery of one date from raster files."""

    path: str = Field(description="A directory of single-band files (band read from the file name, e.g. ..._B02.tif), or one multi-band file with band descriptions (B1..B12, B8A or common names).")
    scale: float | None = Field(None, description="Reflectance = DN * scale + offset. Default: the file's declared scale; 1e-4 for integer data without one (Sentinel-2 DN).")
    offset: float | None = Field(None, description="See scale. Default: the file's declared offset, else 0.")
    nodata: float | None = Field(None, description="DN that marks missing data. Default: the file's nodata.")


class StacSourceConfig(_Strict):
    """Imagery of one date from a STAC item (bands resolved through its metadata)."""

    stac_item: str = Field(description="Path or URL of a STAC item JSON; its assets are read with geoseg.load.")


def _source_tag(v: Any) -> str:
    if isinstance(v, str):
        return "path"
    if isinstance(v, dict):
        return "stac" if "stac_item" in v else "raster"
    return "stac" if isinstance(v, StacSourceConfig) else "raster"


DateSource = Annotated[
    Union[Annotated[str, Tag("path")], Annotated[RasterSourceConfig, Tag("raster")], Annotated[StacSourceConfig, Tag("stac")]],
    Discriminator(_source_tag),
]


# ------------------------------------------------------------------ labels

class RasterLabelsConfig(_Strict):
    """Labels from a raster of integer values, read onto the scene grid (nearest)."""

    path: str = Field(description="Label raster (GeoTIFF). Its values are mapped to classes by each class's `values`.")
    reference: str | None = Field(None, description="For a label raster without georeferencing: a raster of the same shape whose transform and CRS it takes (OSCD: the city's date-1 B02 file).")
    band: int = Field(1, ge=1, description="Band of the label raster holding the labels.")
    nodata: float | None = Field(None, description="Label value meaning 'no label' (default: the file's nodata; `ignore_values` also apply).")


class VectorLabelsConfig(_Strict):
    """Labels from polygons (GeoPackage / GeoJSON), rasterized onto the scene grid."""

    path: str = Field(description="GeoPackage, GeoJSON or other OGR file of polygons.")
    attribute: str = Field(description="Attribute holding each polygon's class: a label value listed in a class's `values`, or the class name.")
    layer: str | None = Field(None, description="Layer of a multi-layer GeoPackage.")
    background: int | str | None = Field(None, description="Class (label value or name) of pixels no polygon covers; default: unlabelled.")


class RuleLabelsConfig(_Strict):
    """Labels derived from the imagery by a spectral-index rule (weak supervision).

    The rule writes label value 1 (positive), 0 (negative) and -1 (no label):
    map them to classes with the classes' `values` and `ignore_values: [-1]`.
    """

    rule: Literal["mndwi", "ndwi", "ndvi"] = Field(description="Normalized-difference index: mndwi (green, swir16), ndwi (green, nir), ndvi (nir, red).")
    threshold: float = Field(0.0, description="Index threshold between negative and positive.")
    margin: float = Field(0.0, ge=0, description="Pixels within +-margin of the threshold get no label.")
    below: dict[str, float] = Field(default_factory=dict, description="Positives also need these bands' reflectance below these values (e.g. {nir: 0.15} keeps snow and cloud out); else no label.")
    min_region: int = Field(0, ge=0, description="Positive regions smaller than this many pixels (8-connected) get no label.")

    def build(self):
        from geoseg.labels import IndexRule

        return IndexRule(index=self.rule, threshold=self.threshold, margin=self.margin,
                         below=tuple(sorted(self.below.items())), min_region=self.min_region)


def _labels_tag(v: Any) -> str:
    if isinstance(v, dict):
        if "rule" in v:
            return "rule"
        if "attribute" in v or str(v.get("path", "")).lower().endswith(_VECTOR_SUFFIXES):
            return "vector"
        return "raster"
    return {RuleLabelsConfig: "rule", VectorLabelsConfig: "vector"}.get(type(v), "raster")


LabelsConfig = Annotated[
    Union[Annotated[RasterLabelsConfig, Tag("raster")], Annotated[VectorLabelsConfig, Tag("vector")], Annotated[RuleLabelsConfig, Tag("rule")]],
    Discriminator(_labels_tag),
]


class SceneConfig(_Strict):
    """One sample: imagery of one or two dates of one place, and its labels."""

    id: str = Field(min_length=1, description="Unique name of the scene (e.g. the city).")
    group: str | None = Field(None, description="Split unit (e.g. the city when a city has several scenes): a group is wholly in training or wholly in validation. Default: the id.")
    dates: list[DateSource] = Field(min_length=1, max_length=2, description="Imagery per date, earlier first: one for segmentation, two for change.")
    labels: LabelsConfig | None = Field(None, description="Raster labels, vector labels, or a labelling rule.")

    @property
    def group_name(self) -> str:
        return self.group or self.id

    def build(self, root: Path):
        from geoseg import scenes as sc

        def p(x: str) -> Path:
            return (root / x) if not Path(x).is_absolute() and "://" not in x else Path(x)

        dates = []
        for d in self.dates:
            if isinstance(d, str):
                dates.append(sc.RasterSource(path=p(d)))
            elif isinstance(d, StacSourceConfig):
                dates.append(sc.StacSource(item=d.stac_item if "://" in d.stac_item else str(p(d.stac_item))))
            else:
                dates.append(sc.RasterSource(path=p(d.path), scale=d.scale, offset=d.offset, nodata=d.nodata))
        lab = self.labels
        if lab is None:
            labels = None
        elif isinstance(lab, RasterLabelsConfig):
            labels = sc.RasterLabels(path=p(lab.path), reference=p(lab.reference) if lab.reference else None, band=lab.band, nodata=lab.nodata)
        elif isinstance(lab, VectorLabelsConfig):
            labels = sc.VectorLabels(path=p(lab.path), attribute=lab.attribute, layer=lab.layer, background=lab.background)
        else:
            labels = sc.RuleLabels(rule=lab.build())
        return sc.Scene(id=self.id, group=self.group_name, dates=tuple(dates), labels=labels)


# ------------------------------------------------------------------ classes

class ClassConfig(_Strict):
    """One output class."""

    name: str = Field(min_length=1, description="Class name, e.g. 'change' or 'water'.")
    color: tuple[int, int, int] = Field(description="RGB colour 0-255 for maps.")
    values: list[int] = Field(default_factory=list, description="Label values that mean this class (e.g. OSCD change = [2]).")
    id: int | None = Field(None, ge=0, le=254, description="Value of this class in the output class raster. Default: its position in the list (0, 1, ...).")


def _check_classes(classes: list[ClassConfig], ignore: list[int]) -> None:
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"class names are not unique: {names}")
    seen: dict[int, str] = {}
    for c in classes:
        for v in c.values:
            if v in seen:
                raise ValueError(f"label value {v} is listed for both {seen[v]!r} and {c.name!r}")
            if v in ignore:
                raise ValueError(f"label value {v} of class {c.name!r} is also in ignore_values")
            seen[v] = c.name
    ids = [c.id if c.id is not None else i for i, c in enumerate(classes)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"class ids are not unique: {ids}")


def build_labelmap(classes: list[ClassConfig], ignore: list[int]):
    from geoseg.labels import LabelMap

    return LabelMap(
        class_names=tuple(c.name for c in classes),
        values=tuple((v, i) for i, c in enumerate(classes) for v in c.values),
        ignore=frozenset(ignore),
    )


# ------------------------------------------------------------------ training

class NetworkConfig(_Strict):
    """The network, by segmentation-models-pytorch names."""

    architecture: str = Field("Unet", description="smp architecture: Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Linknet, PSPNet, ...")
    encoder: str = Field("mobilenet_v2", description="smp encoder name (trained from scratch: no weights are downloaded).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra smp.create_model arguments, e.g. decoder_channels: [128, 64, 32, 16, 16].")
    half: bool = Field(False, description="Save the weights as float16 (half the file size).")


class SplitConfig(_Strict):
    """Which scene groups validate; all others train. A group is never in both."""

    val_groups: list[str] = Field(min_length=1, description="Groups (scene `group`, default the scene id) held out for validation.")


class SamplingConfig(_Strict):
    """Chips for training (random) and validation (a regular grid)."""

    chip_size: int = Field(128, gt=0, description="Training chip edge, pixels; a multiple of the network's size divisor.")
    batch_size: int = Field(16, gt=0, description="Chips per step.")
    steps_per_epoch: int = Field(50, gt=0, description="Optimizer steps per epoch.")
    rare_class: str | None = Field(None, description="Class to oversample; default: the least frequent class in the training labels.")
    rare_share: float = Field(0.5, ge=0, le=1, description="Minimum share of chips centred near a pixel of the rare class.")
    min_labelled: float = Field(0.1, ge=0, le=1, description="Random chips need at least this share of labelled pixels (else redrawn).")
    val_tile: int = Field(256, gt=0, description="Edge of the regular validation tiles, pixels; a multiple of the size divisor.")


class AugmentConfig(_Strict):
    """Random augmentation of training chips."""

    flips: bool = Field(True, description="Random horizontal and vertical flips.")
    rot90: bool = Field(True, description="Random rotations by multiples of 90 degrees.")
    brightness: float = Field(0.01, ge=0, description="Per band and chip, add U(-b, b) reflectance.")
    contrast: float = Field(0.05, ge=0, description="Per band and chip, multiply by 1 + U(-c, c).")
    date_gain: float = Field(0.0, ge=0, lt=1, description="Per date and chip, multiply all bands by 1 + U(-g, g): illumination / season differences between dates are not change.")
    swap_dates: bool = Field(False, description="Change models: swap the two dates of half the chips (change is labelled both ways).")


class LossConfig(_Strict):
    """Weighted sum of losses suited to imbalanced targets."""

    ce: float = Field(1.0, ge=0, description="Weight of cross-entropy.")
    dice: float = Field(0.0, ge=0, description="Weight of soft Dice loss (mean over classes).")
    focal: float = Field(0.0, ge=0, description="Weight of focal loss.")
    focal_gamma: float = Field(2.0, ge=0, description="Focusing parameter of the focal loss.")
    class_weights: Union[Literal["auto", "none"], list[float]] = Field(
        "auto", description="Cross-entropy / focal class weights: 'auto' (inverse square root of the training class frequencies, mean 1), 'none', or one number per class.")

    @model_validator(mode="after")
    def _some(self):
        if self.ce + self.dice + self.focal <= 0:
            raise ValueError("at least one of ce, dice, focal must have a positive weight")
        return self


class OptimConfig(_Strict):
    """AdamW with a learning-rate schedule and early stopping."""

    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    schedule: Literal["onecycle", "cosine", "constant"] = Field("onecycle", description="Learning-rate schedule over all planned steps (cosine has a 5% linear warm-up).")
    epochs: int = Field(30, gt=0, description="Most epochs.")
    patience: int = Field(8, gt=0, description="Stop when the monitored validation metric has not improved for this many epochs.")
    monitor: str = Field("miou", description="Validation metric for early stopping and the kept weights: 'miou', 'f1:CLASS' or 'iou:CLASS'.")


class InferenceConfig(_Strict):
    """Tiling written into the model card for inference."""

    tile_size: int = Field(256, gt=0, description="Tile edge for inference, pixels; a multiple of the size divisor.")
    halo: int = Field(32, ge=0, description="Context pixels per tile side down-weighted when stitching.")
    cpu_memory_format: Literal["auto", Layout] = Field(
        "auto", description="Tensor layout for CPU inference, recorded in the card. 'auto' times one tile both ways after "
        "training and keeps channels_last if it is at least 5 % faster (MobileNet and ResNet encoders: 1.1-1.6x; "
        "transformers and EfficientNets run slower) (geoseg.cpunet).")


class TrainConfig(_Strict):
    """``geoseg train`` configuration."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Model name: the output files are NAME.json and NAME.safetensors.")
    version: str = Field("1.0.0", description="Model version.")
    task: Literal["segmentation", "change"] = Field("segmentation", description="'change': two dates per scene stacked as channels (early fusion).")
    description: str = Field("", description="One paragraph for the model card.")
    labels_note: str | None = Field(None, description="What the labels are (e.g. 'weak: derived by rule ...'); recorded in the card.")
    root: str | None = Field(None, description="Directory relative paths are resolved against, relative to this file (default: the current directory).")
    bands: list[str] = Field(min_length=1, description="Input bands by common name, in order (per date).")
    resolution: float = Field(10.0, gt=0, description="Pixel size of the training grid, metres.")
    crs: str | None = Field(None, description="CRS of the training grids (default: each scene's UTM zone).")
    classes: list[ClassConfig] = Field(min_length=2, description="Output classes in channel order, with the label values that mean each.")
    ignore_values: list[int] = Field(default_factory=list, description="Label values meaning 'no label' (excluded from loss and metrics).")
    scenes: list[SceneConfig] = Field(min_length=2, description="Training and validation scenes.")
    split: SplitConfig
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    seed: int = Field(0, description="Seed of every random choice: the same config on the same machine trains the same weights (CPU).")

    @property
    def time_steps(self) -> int:
        return 2 if self.task == "change" else 1

    @field_validator("bands")
    @classmethod
    def _bands(cls, v):
        from geoseg.rasters import canonical_band

        out = []
        for b in v:
            c = canonical_band(b)
            if c is None:
                from geoseg.bands import SENTINEL2_BANDS

                raise ValueError(f"band {b!r} is not a known band; use common names: {', '.join(SENTINEL2_BANDS)}")
            out.append(c)
        if len(set(out)) != len(out):
            raise ValueError(f"bands are listed twice: {v}")
        return out

    @model_validator(mode="after")
    def _consistent(self):
        _check_classes(self.classes, self.ignore_values)
        names = [c.name for c in self.classes]
        ids = [s.id for s in self.scenes]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"scene ids are not unique: {dupes}")
        for s in self.scenes:
            if len(s.dates) != self.time_steps:
                raise ValueError(f"scene {s.id!r} has {len(s.dates)} date(s) but task {self.task!r} needs {self.time_steps}")
            if s.labels is None:
                raise ValueError(f"scene {s.id!r} has no labels")
            if isinstance(s.labels, RuleLabelsConfig) and self.task == "change":
                raise ValueError(f"scene {s.id!r}: rule labels are for single-date segmentation, not change")
        groups = {s.group_name for s in self.scenes}
        unknown = [g for g in self.split.val_groups if g not in groups]
        if unknown:
            raise ValueError(f"split.val_groups {unknown} name no scene group (groups: {sorted(groups)})")
        if not groups - set(self.split.val_groups):
            raise ValueError("every scene group is in split.val_groups: nothing left to train on")
        if self.sampling.rare_class is not None and self.sampling.rare_class not in names:
            raise ValueError(f"sampling.rare_class {self.sampling.rare_class!r} is not a class ({names})")
        m = self.optim.monitor
        if m != "miou":
            kind, _, cname = m.partition(":")
            if kind not in ("f1", "iou") or cname not in names:
                raise ValueError(f"optim.monitor {m!r} must be 'miou', 'f1:CLASS' or 'iou:CLASS' with CLASS one of {names}")
        if isinstance(self.loss.class_weights, list) and len(self.loss.class_weights) != len(self.classes):
            raise ValueError(f"loss.class_weights has {len(self.loss.class_weights)} numbers for {len(self.classes)} classes")
        if 2 * self.inference.halo >= self.inference.tile_size:
            raise ValueError(f"inference.halo {self.inference.halo} leaves no tile core in tile_size {self.inference.tile_size}")
        return self

    def labelmap(self):
        return build_labelmap(self.classes, self.ignore_values)


# ------------------------------------------------------------------ evaluation

class EvalClassValues(_Strict):
    """Label values of one model class (by the class name in the model card)."""

    name: str = Field(description="Class name as in the model card.")
    values: list[int] = Field(min_length=1, description="Label values that mean this class.")


class BaselineConfig(RuleLabelsConfig):
    """A plain index rule scored on the same scenes and grid as the model."""

    name: str = Field(description="How the report names this baseline, e.g. 'MNDWI > 0'.")
    positive_class: str = Field(description="Model class the rule's positives stand for (e.g. 'water'); its negatives are the other class.")


class EvalConfig(_Strict):
    """``geoseg evaluate`` configuration: labelled scenes and what their labels mean."""

    title: str = Field("", description="Title of the report.")
    root: str | None = Field(None, description="Directory relative paths are resolved against, relative to this file (default: the current directory).")
    classes: list[EvalClassValues] = Field(min_length=1, description="Label values of each model class.")
    ignore_values: list[int] = Field(default_factory=list, description="Label values meaning 'no label': excluded from the scores.")
    scenes: list[SceneConfig] = Field(min_length=1, description="Labelled scenes, scored one by one and pooled.")
    baselines: list[BaselineConfig] = Field(default_factory=list, description="Index rules scored on the same pixels for comparison.")
    batch_size: int | None = Field(None, gt=0, description="Tiles per network call (default: the predictor's).")


# ------------------------------------------------------------------ YAML loading

def _line_index(text: str) -> dict[tuple, int]:
    """(key path) -> 1-based line of every mapping key and sequence item in a YAML text."""
    out: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (k.value,)
                out[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return out


def _where(loc: tuple, lines: dict[tuple, int]) -> tuple[str, int | None]:
    # drop pydantic's union tags ('raster', 'function-after[...]'...) from the location
    path: list = []
    probe: tuple = ()
    for part in loc:
        cand = probe + (part,)
        if cand in lines or isinstance(part, int) or not lines:
            probe = cand
            path.append(part)
        elif any(k[: len(cand)] == cand for k in lines):
            probe = cand
            path.append(part)
        else:
            # a tag, or a key absent from the file (missing / unknown): keep only the last
            if part == loc[-1]:
                path.append(part)
    line = None
    for n in range(len(probe), 0, -1):
        if probe[:n] in lines:
            line = lines[probe[:n]]
            break
    text = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
    return text or "(top level)", line


def load_yaml_model(path: str | Path, model: type[BaseModel]):
    """Read YAML ``path`` and validate it as ``model``; :class:`ConfigError` names file, line and key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config {str(path)!r} does not exist", fix="give the path of a YAML config")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path}{where} is not valid YAML: {getattr(err, 'problem', err)}", fix="fix the YAML syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} is not a YAML mapping of keys to values", fix="write it as `key: value` lines")
    # top-level keys starting with "x-" hold YAML anchors shared by other keys; they are not settings
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = _line_index(text)
        msgs = []
        for e in err.errors()[:5]:
            key, line = _where(tuple(e["loc"]), lines)
            at = f"{path}:{line}" if line else str(path)
            if e["type"] == "extra_forbidden":
                msgs.append(f"{at}: unknown key {key!r}")
            elif e["type"] == "missing":
                msgs.append(f"{at}: missing key {key!r}")
            else:
                msgs.append(f"{at}: {key}: {e['msg']}")
        more = f" (and {len(err.errors()) - 5} more)" if len(err.errors()) > 5 else ""
        raise ConfigError(
            "invalid config: " + "; ".join(msgs) + more,
            fix=f"fix those keys; every key is described in geoseg.train_config.{model.__name__}",
        ) from None


def resolve_root(path: str | Path, root: str | None) -> Path:
    """The directory a config's relative paths are resolved against."""
    if root is None:
        return Path.cwd()
    r = Path(root)
    return r if r.is_absolute() else (Path(path).resolve().parent / r).resolve()


def load_train_config(path: str | Path) -> TrainConfig:
    return load_yaml_model(path, TrainConfig)


def load_eval_config(path: str | Path) -> EvalConfig:
    return load_yaml_model(path, EvalConfig)
