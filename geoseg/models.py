"""Model cards and band-aware models.

A model is two files side by side: ``NAME.json``, the model card (what the
network expects and produces, and where it came from), and ``NAME.safetensors``,
its weights. Nothing is ever unpickled. :func:`load` validates the card,
rebuilds the network with ``segmentation_models_pytorch.create_model`` (encoder
weights ``None``: nothing is downloaded), checks the weights' hash and loads
them strictly, so a file that does not match the card is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geoseg.cpunet import Layout
from geoseg.errors import InputError


class ModelError(InputError):
    """A model card or weights file that cannot be used."""


class ClassInfo(BaseModel):
    """One output class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0, le=254, description="Value in the class raster (255 is reserved for nodata).")
    name: str = Field(min_length=1, description="Human-readable name, e.g. 'water'.")
    color: tuple[int, int, int] = Field(description="RGB colour, 0-255 each, used in COG colour tables and QGIS styles.")

    @field_validator("color")
    @classmethod
    def _rgb(cls, v):
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError(f"colour {v} has components outside 0..255")
        return v


class Normalization(BaseModel):
    """How reflectance is scaled before the network: ``(x - mean) / std`` per band."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Literal["standardize"] = "standardize"
    mean: tuple[float, ...] = Field(description="Per input band, in the card's value units (reflectance).")
    std: tuple[float, ...] = Field(description="Per input band; strictly positive.")

    @field_validator("std")
    @classmethod
    def _positive(cls, v):
        if any(s <= 0 for s in v):
            raise ValueError("every std must be > 0")
        return v


class ModelCard(BaseModel):
    """Everything needed to run a model correctly, and its provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="File-name-safe model name.")
    version: str = Field(description="Model version, e.g. '1.0.0'.")
    task: Literal["segmentation", "change"] = Field("segmentation", description="'change' for bi-temporal change models.")
    architecture: str = Field(description="segmentation-models-pytorch architecture name (Unet, DeepLabV3Plus, ...).")
    encoder: str = Field(description="smp encoder name, e.g. 'resnet18' or 'mobilenet_v2'.")
    architecture_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra smp.create_model arguments (decoder_channels, ...).")
    bands: tuple[str, ...] = Field(min_length=1, description="Input bands by common name, in order (per time step).")
    time_steps: Literal[1, 2] = Field(1, description="1 for single-date models, 2 for bi-temporal (dates stacked as channels, earlier first).")
    normalization: Normalization
    value_range: tuple[float, float] = Field((-0.5, 3.0), description="Range of plausible input values (reflectance); inputs far outside it are refused.")
    classes: tuple[ClassInfo, ...] = Field(min_length=2, description="Output classes, in the network's channel order.")
    nodata_class: int = Field(255, ge=0, le=255, description="Class raster value for pixels without valid input.")
    resolution: float = Field(gt=0, description="Ground resolution the model was trained at, metres.")
    tile_size: int = Field(gt=0, description="Tile edge in pixels for inference.")
    halo: int = Field(ge=0, description="Pixels of context on each tile side whose predictions are down-weighted when stitching.")
    size_divisor: int = Field(32, gt=0, description="Network input sides must be multiples of this.")
    cpu_memory_format: Layout = Field(
        "contiguous", description="Tensor layout for CPU inference: channels_last runs many CNN encoders (MobileNet, "
        "ResNet) 1.1-1.6x faster, but transformers and EfficientNets slower: measure before setting it (geoseg.cpunet).")
    weights: str = Field(description="Weights file name, relative to the card.")
    weights_sha256: str | None = Field(None, description="SHA-256 of the weights file.")
    provenance: dict[str, Any] = Field(default_factory=dict, description="Training data, config, command, metrics.")

    @property
    def in_channels(self) -> int:
        return len(self.bands) * self.time_steps

    @property
    def class_ids(self) -> list[int]:
        return [c.id for c in self.classes]

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.normalization.mean) != self.in_channels or len(self.normalization.std) != self.in_channels:
            raise ValueError(
                f"normalization has {len(self.normalization.mean)} means / {len(self.normalization.std)} stds "
                f"but the model takes {self.in_channels} channels ({len(self.bands)} bands x {self.time_steps} time steps)"
            )
        if len(set(self.bands)) != len(self.bands):
            raise ValueError("bands are listed twice")
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ValueError("class ids are not unique")
        if self.nodata_class in ids:
            raise ValueError(f"nodata_class {self.nodata_class} is also a class id")
        if 2 * self.halo >= self.tile_size:
            raise ValueError(f"halo {self.halo} leaves no tile core in tile_size {self.tile_size} (need 2*halo < tile_size)")
        if self.tile_size % self.size_divisor:
            lo = self.tile_size // self.size_divisor * self.size_divisor
            raise ValueError(f"tile_size {self.tile_size} is not a multiple of size_divisor {self.size_divisor} (nearest: {lo} or {lo + self.size_divisor})")
        return self

    # -- presentation ---------------------------------------------------
    def _repr_markdown_(self) -> str:
        rows = [
            ("name", f"{self.name} {self.version}"), ("task", self.task),
            ("network", f"{self.architecture} / {self.encoder}"),
            ("bands", ", ".join(self.bands) + (f" (x{self.time_steps} dates)" if self.time_steps > 1 else "")),
            ("resolution", f"{self.resolution:g} m"), ("tile / halo", f"{self.tile_size} / {self.halo} px"),
            ("classes", ", ".join(f"{c.id}: {c.name}" for c in self.classes)),
        ]
        return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_card(path: str | Path) -> ModelCard:
    """Read and validate a model card JSON; errors name the field."""
    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.exists():
        raise ModelError(f"model card {str(path)!r} does not exist", fix="give the path of the model's .json card")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"model card {str(path)!r} is not valid JSON: {err}", fix="repair or regenerate the card") from None
    try:
        return ModelCard.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(card)"
        raise ModelError(
            f"model card {str(path)!r}: field {where!r}: {first['msg']}" + (f" ({len(err.errors())} problems)" if len(err.errors()) > 1 else ""),
            fix="fix that field; the card schema is geoseg.models.ModelCard",
        ) from None


def build_network(card: ModelCard):
    """The untrained network the card describes (no download)."""
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(
            card.architecture, encoder_name=card.encoder, encoder_weights=None,
            in_channels=card.in_channels, classes=len(card.classes), **card.architecture_kwargs,
        )
    except KeyError as err:
        raise ModelError(f"unknown architecture or encoder in card {card.name!r}: {err}", fix="use an smp architecture (Unet, DeepLabV3Plus, ...) and encoder name") from None
    except (TypeError, ValueError) as err:
        raise ModelError(f"card {card.name!r} does not describe a buildable network: {err}", fix="check architecture, encoder and architecture_kwargs") from None


@dataclass(frozen=True)
class Model:
    """A card and its network, ready for inference."""

    card: ModelCard
    network: Any  # torch.nn.Module
    path: Path | None = None


def load(card: str | Path | ModelCard, *, weights: str | Path | None = None, device: str = "cpu") -> Model:
    """Rebuild the card's network and load its safetensors weights.

    ``card`` is a path to the card JSON (weights resolved relative to it) or a
    :class:`ModelCard` (then give ``weights``).
    """
    from safetensors.torch import load_file

    path = None
    if not isinstance(card, ModelCard):
        path = Path(card)
        card = read_card(path)
        path = path.with_suffix(".json")
    if weights is None:
        if path is None:
            raise ModelError("no weights file given for an in-memory card", fix="pass weights=PATH")
        weights = path.parent / card.weights
    weights = Path(weights)
    if not weights.exists():
        raise ModelError(f"weights file {str(weights)!r} of model {card.name!r} does not exist", fix="put the .safetensors file next to the card, or fix the card's 'weights' field")
    if card.weights_sha256 and sha256_file(weights) != card.weights_sha256:
        raise ModelError(f"weights file {str(weights)!r} does not match the card's sha256", fix="the file is corrupt or belongs to another model; restore it")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as err:  # safetensors raises several types for corrupt files
        raise ModelError(f"weights file {str(weights)!r} is not a readable safetensors file ({type(err).__name__})", fix="restore the file; geoseg never loads pickled weights") from None
    net = build_network(card)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        msg = str(err).splitlines()
        raise ModelError(
            f"weights {str(weights)!r} do not fit the card's network ({card.architecture}/{card.encoder}, {card.in_channels} in, {len(card.classes)} out): {msg[1].strip() if len(msg) > 1 else msg[0]}",
            fix="use the card that was written with these weights",
        ) from None
    net.eval().to(device)
    return Model(card=card, network=net, path=path)


def save(network, card: ModelCard, directory: str | Path, *, half: bool = False) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json`` (with the weights' sha256) atomically."""
    from safetensors.torch import save_file

    from geoseg.io import atomic_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{card.name}.safetensors"
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(weights, overwrite=True) as tmp:
        # one metadata key: safetensors writes metadata in hash-map order, so two keys made the file bytes
        # (and the sha256 in the card) differ between saves of identical weights
        save_file(state, str(tmp), metadata={"geoseg_model": f"{card.name} {card.version}"})
    card = card.model_copy(update={"weights": weights.name, "weights_sha256": sha256_file(weights)})
    out = directory / f"{card.name}.json"
    with atomic_path(out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return out


_CACHE: dict[tuple[str, str], Model] = {}
_CACHE_LOCK = threading.Lock()


def cached(card_path: str | Path, device: str) -> Model:
    """Load a model once per process (per worker), then reuse it for every tile."""
    key = (str(Path(card_path).resolve()), device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load(card_path, device=device)
        return _CACHE[key]
