"""From a scenario to a model and to batches it can eat: the bridge to the models/ zoo.

`BUILDERS` is the closed registry of model kinds (the scenario's `model.kind`), one builder each; a
kind outside it is an UnknownKind.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedsilo import artifacts
from fedsilo.data.examples import Examples
from fedsilo.data.sources import resolve_path
from fedsilo.errors import DataError, ModelSourceError, UnknownKind
from fedsilo.scenario import ModelSpec
from fedsilo.weights import State
from models import build_bert, build_cnn, load_matching_weights, load_tokenizer
from models.bert import resolve_source
from models.lora import adapter_state, is_lora, load_adapter, merged, with_lora


@dataclass
class EncodedSet:
    """Model-ready inputs and integer labels of one split."""

    features: dict[str, list | torch.Tensor]
    labels: torch.Tensor
    pad: object = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_image(self) -> bool:
        """Whether the inputs are images (pixel values) rather than token ids."""
        return "pixel_values" in self.features

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Yield (inputs, labels) batches; shuffled when a generator is given."""
        order = torch.randperm(len(self), generator=generator) if generator else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.take(order[start : start + batch_size])

    def take(self, rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The (inputs, labels) batch of the given row indices, text padded to its longest row."""
        if self.is_image:
            return {"pixel_values": self.features["pixel_values"][rows]}, self.labels[rows]
        ids = [self.features["input_ids"][i] for i in rows.tolist()]
        return dict(self.pad({"input_ids": ids}, return_tensors="pt")), self.labels[rows]


def label_ids(examples: Examples, labels: list[str], silo: str) -> torch.Tensor:
    """Labels as class indices; labels unknown to the model are an error naming the silo."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(examples.labels.tolist()) - set(index))
    if unknown:
        raise DataError(f"silo {silo!r} has label(s) {unknown[:5]} that are not in data.labels {labels[:10]}")
    return torch.tensor([index[name] for name in examples.labels.tolist()], dtype=torch.long)


def encode(examples: Examples, labels: list[str], spec: ModelSpec, silo: str, tokenizer=None) -> EncodedSet:
    """Tokenize texts once (padding per batch) or scale images to [-1, 1]."""
    targets = label_ids(examples, labels, silo)
    if spec.takes_images:
        pixels = torch.from_numpy(np.asarray(examples.inputs, dtype=np.float32) / 127.5 - 1.0)
        return EncodedSet({"pixel_values": pixels}, targets)
    tokens = tokenizer(list(examples.inputs), truncation=True, max_length=spec.max_length)
    return EncodedSet({"input_ids": tokens["input_ids"]}, targets, pad=tokenizer.pad)


def tokenizer_for(spec: ModelSpec):
    """The tokenizer of a text model's source, or None for an image model."""
    if spec.takes_images:
        return None
    try:
        return load_tokenizer(spec.source)
    except OSError as exc:
        raise ModelSourceError(
            f"model.source {spec.source!r}: no tokenizer found ({exc}). Use "
            "'packaged:all-MiniLM-L6-v2', a local model folder, or a hub id on a machine with internet."
        ) from None


def _cnn_checkpoint(source: str) -> State:
    from safetensors.torch import load_file

    if source.startswith(("models:/", "runs:/")):
        folder = Path(artifacts.download_model(source))  # MLflow is imported only for such URIs
        files = sorted(f for f in folder.rglob("*.safetensors") if f.name != "strategy_state.safetensors")
        if not files:
            raise ModelSourceError(f"model.source {source!r}: the MLflow model holds no .safetensors weights")
        return load_file(files[0])
    path = resolve_path(source)
    if not path.is_file():
        raise ModelSourceError(
            f"model.source: pretrained CNN checkpoint {path} not found. Create it with "
            f"`fedsilo pretrain --output {source}` (trains on scikit-learn's digits, about a minute), "
            "or name an MLflow model URI from a previous `fedsilo pretrain`."
        )
    return load_file(path)


def _bert(spec: ModelSpec, num_labels: int, input_shape: tuple[int, ...], seed: int) -> torch.nn.Module:
    """The BERT-family classifier, with fresh LoRA adapters under `model.lora`."""
    try:
        model = build_bert(spec.source, num_labels, seed)
    except OSError as exc:
        where = resolve_source(spec.source)
        raise ModelSourceError(f"model.source {where!r} could not be loaded ({exc})") from None
    if spec.lora is None:
        return model
    lora = spec.lora
    return with_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, seed)


def _cnn(spec: ModelSpec, num_labels: int, input_shape: tuple[int, ...], seed: int) -> torch.nn.Module:
    """The CNN sized to the images, its pretrained layers loaded unless `model.source` is 'random'."""
    channels, size = input_shape[0], input_shape[-1]
    model = build_cnn(channels, size, num_labels, seed)
    if spec.source != "random":
        load_matching_weights(model, _cnn_checkpoint(spec.source))
    return model


Builder = Callable[[ModelSpec, int, tuple[int, ...], int], torch.nn.Module]

BUILDERS: dict[str, Builder] = {"bert": _bert, "cnn": _cnn}


def build_model(spec: ModelSpec, num_labels: int, input_shape: tuple[int, ...], seed: int) -> torch.nn.Module:
    """The shared model at its pretrained starting point; the same seed gives the same weights
    (and the same fresh adapters under `model.lora`)."""
    builder = BUILDERS.get(spec.kind) if isinstance(spec.kind, str) else None
    if builder is None:
        raise UnknownKind("model kind", spec.kind, list(BUILDERS))
    return builder(spec, num_labels, input_shape, seed)


def shared_state(model: torch.nn.Module) -> State:
    """What a silo trains and exchanges: the whole state, or the adapters and head under LoRA."""
    return adapter_state(model) if is_lora(model) else model.state_dict()


def load_shared(model: torch.nn.Module, state: State) -> None:
    """Put what `shared_state` gives back into the model (strict: every tensor, nothing else)."""
    if is_lora(model):
        load_adapter(model, state)
    else:
        model.load_state_dict(state)


def plain_spec(spec: ModelSpec) -> ModelSpec:
    """The spec of the model a LoRA model merges into (the same spec without adapters)."""
    return spec.model_copy(update={"lora": None})


def full_state(
    spec: ModelSpec, num_labels: int, input_shape: tuple[int, ...], seed: int, shared: State
) -> State:
    """The weights of the plain model: `shared` itself, or under LoRA the pretrained model with the
    adapters in `shared` merged in (what is registered and served)."""
    if spec.lora is None:
        return shared
    model = build_model(spec, num_labels, input_shape, seed)
    load_adapter(model, shared)
    return merged(model).state_dict()
