"""A silo's participant: its data, its copy of the model, and what it does in a round.

The same participant serves the embedded mode (one process) and a silo's own worker.
It receives the global model by reference and answers with small records.
"""

import hashlib
import time
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from pydantic import TypeAdapter

from fedsilo.data import Examples, label_names, load_silo_data
from fedsilo.data.sources import source_for_file
from fedsilo.metrics import classification_metrics
from fedsilo.modeling import build_model, encode, tokenizer_for
from fedsilo.scenario import Scenario
from fedsilo.training import FitSettings, Progress, fit, predict
from fedsilo.weights import State, WeightRef, read_state, write_state

EVAL_BATCH_SIZE = 64


@dataclass(frozen=True)
class Evaluation:
    """A model's predictions and metrics on one silo's test split."""

    silo: str
    accuracy: float
    f1_macro: float
    loss: float
    confusion: list[list[int]]  # rows: true label, columns: predicted; counts only, never rows


@dataclass(frozen=True)
class FitReport:
    """What a silo sends back after local training: a weight reference, never the tensors."""

    silo: str
    round: int
    update: WeightRef
    num_examples: int
    train_loss: float
    local: Evaluation
    seconds: float


@dataclass(frozen=True)
class DataSummary:
    """Counts and label distribution of a silo's data, never its rows; images also give their shape."""

    silo: str
    train_counts: dict[str, int] = field(default_factory=dict)
    test_counts: dict[str, int] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    version: str = ""  # sha256 of the rows: changes exactly when the silo's data changes


def _digest(*parts: Examples) -> str:
    hasher = hashlib.sha256()
    for examples in parts:
        inputs = examples.inputs
        hasher.update(inputs.tobytes() if examples.is_image else "\x1f".join(inputs).encode())
        hasher.update("\x1f".join(map(str, examples.labels)).encode())
    return hasher.hexdigest()


def summarize(scenario: Scenario, silo: str) -> DataSummary:
    """Load and split a silo's data and describe it; needs only this silo's own data."""
    data = load_silo_data(scenario, silo)
    counts = data.train.label_counts(), data.test.label_counts()
    return DataSummary(silo, *counts, data.train.input_shape, _digest(data.train, data.test))


def with_local_data(scenario: Scenario, silo: str, path: str) -> Scenario:
    """The scenario as a silo's worker sees it: this silo's rows come from its own file at `path`.

    A silo's data location is the silo's business (its worker's flags or environment), so the
    coordinator never sends or needs it. Table columns follow the scenario's shared source.
    """
    raw = scenario.model_dump(mode="json")
    spec = next(s for s in raw["silos"] if s["name"] == silo)
    spec["data"] = source_for_file(path, raw["data"]["source"])
    return Scenario.model_validate(raw)


class SiloParticipant:
    """Holds one silo's encoded data and model between rounds."""

    def __init__(self, scenario: Scenario, silo: str):
        self.scenario = scenario
        self.silo = silo
        self.labels = label_names(scenario)
        data = load_silo_data(scenario, silo)
        tokenizer = tokenizer_for(scenario.model)
        self.train = encode(data.train, self.labels, scenario.model, silo, tokenizer)
        self.test = encode(data.test, self.labels, scenario.model, silo, tokenizer)
        self.model = pretrained_model(scenario, len(self.labels), data.train.input_shape)

    @property
    def num_examples(self) -> int:
        return len(self.train)

    def _load(self, ref: WeightRef) -> None:
        self.model.load_state_dict(read_state(ref))

    def evaluate(self, ref: WeightRef) -> Evaluation:
        """Evaluate the weights at `ref` on this silo's test split."""
        self._load(ref)
        return self._evaluate_current()

    def _evaluate_current(self) -> Evaluation:
        probs = predict(self.model, self.test, EVAL_BATCH_SIZE)
        return Evaluation(self.silo, **classification_metrics(self.test.labels.numpy(), probs))

    def fit(
        self, ref: WeightRef, round_index: int, update_uri: str, progress: Progress | None = None
    ) -> FitReport:
        """Start from the global weights at `ref`, train locally, write the update to `update_uri`."""
        started = time.perf_counter()
        self._load(ref)
        federation = self.scenario.federation
        silo_index = self.scenario.silo_names().index(self.silo)
        settings = FitSettings(
            epochs=federation.local_epochs,
            batch_size=federation.batch_size,
            learning_rate=federation.learning_rate,
            optimizer=federation.optimizer,
            seed=int(np.random.SeedSequence([federation.seed, round_index, silo_index]).generate_state(1)[0]),
        )
        train_loss = fit(self.model, self.train, settings, progress)
        local = self._evaluate_current()
        update = write_state(self.model.state_dict(), update_uri)
        return FitReport(
            self.silo,
            round_index,
            update,
            self.num_examples,
            train_loss,
            local,
            time.perf_counter() - started,
        )


Reply = TypeVar("Reply", DataSummary, FitReport, Evaluation)


def dump_reply(reply: DataSummary | FitReport | Evaluation) -> bytes:
    """A silo's answer as JSON, for the shared store when the silo runs in another process."""
    return TypeAdapter(type(reply)).dump_json(reply)


def load_reply(kind: type[Reply], payload: bytes) -> Reply:
    """Read back what `dump_reply` wrote."""
    return TypeAdapter(kind).validate_json(payload)


_participants: dict[tuple[str, str], SiloParticipant] = {}


def participant(scenario: Scenario, silo: str) -> SiloParticipant:
    """This process's participant for a silo, built once per scenario and kept across rounds.

    Naming the labels (as the coordinator does before round 0) does not change which participant
    serves: they are the labels it derived from the same data.
    """
    key = (scenario.model_dump_json(exclude={"data": {"labels"}}), silo)
    if key not in _participants:
        _participants[key] = SiloParticipant(scenario, silo)
    return _participants[key]


def release_participants() -> None:
    """Free the models and data held for finished jobs."""
    _participants.clear()


def model_card(scenario: Scenario, input_shape: tuple[int, ...]) -> dict:
    """What a logged model needs to be rebuilt elsewhere: its spec, label names and input shape.

    `scenario` has its labels resolved (see federation.with_labels); no silo data is read.
    """
    return {
        "model": scenario.model.model_dump(),
        "labels": list(scenario.data.labels),
        "input_shape": list(input_shape),
    }


def pretrained_model(scenario: Scenario, num_labels: int, input_shape: tuple[int, ...]) -> torch.nn.Module:
    """The pretrained model with a seeded new head: the same in every silo and in the coordinator."""
    return build_model(scenario.model, num_labels, input_shape, scenario.federation.seed)


def initial_state(scenario: Scenario, input_shape: tuple[int, ...]) -> State:
    """The global model before round 1, built by the coordinator from the model spec alone."""
    return pretrained_model(scenario, len(scenario.data.labels), input_shape).state_dict()
