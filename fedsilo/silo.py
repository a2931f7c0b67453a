"""A silo's participant: its data, its copy of the model, and what it does in a round.

The same participant serves the embedded mode (one process) and a silo's own worker.
It receives the global model by reference and answers with small records.
"""

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fedsilo.data import Examples, SiloData, label_names, load_silo_data
from fedsilo.data.sources import source_for_file
from fedsilo.ditto import PersonalModel
from fedsilo.drift import ControlVariate, ScaffoldRound
from fedsilo.errors import SiloDeclined
from fedsilo.messages import DataSummary, Evaluation, FitReport, Scores, WeightRef
from fedsilo.metrics import classification_metrics
from fedsilo.modeling import (
    build_model,
    encode,
    is_lora,
    load_shared,
    plain_spec,
    shared_state,
    tokenizer_for,
)
from fedsilo.personal import PersonalStore, personal_names, with_global_values
from fedsilo.privacy.dp import draw_count
from fedsilo.privacy.pending import state_folder
from fedsilo.scenario import Scenario
from fedsilo.training import FitSettings, Progress, fit, predict
from fedsilo.transfer import to_wire
from fedsilo.weights import State, read_state, write_state

EVAL_BATCH_SIZE = 64
PERSONALIZE_SEED_KEY = 1_000_003  # seeds personalization apart from every round index


ALL_LABELS = "(all labels)"
"""Under DP-SGD a DataSummary's counts are totals, under this one key: no per-label count leaves."""


def keep_once(path: Path, make: Callable[[], bytes]) -> bytes:
    """The content of `path`, written once from `make()` (mode 0600) when it does not exist yet.

    Linking a finished temporary file makes the first writer win, so two processes never keep (or
    send) two different values.
    """
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(make())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_bytes()


def silo_secret(silo: str) -> bytes:
    """32 random bytes the silo keeps in its state folder and never sends: the key of its data version."""
    return keep_once(state_folder(silo) / "data-version.key", lambda: secrets.token_bytes(32))


def _digest(key: bytes, *parts: Examples) -> str:
    """HMAC-SHA256 of the rows under the silo's key: it changes exactly when the rows change, and
    without the key no one can test a guess of them (a plain hash would confirm a guessed row)."""
    hasher = hmac.new(key, digestmod="sha256")
    for examples in parts:
        inputs = examples.inputs
        hasher.update(inputs.tobytes() if examples.is_image else "\x1f".join(inputs).encode())
        hasher.update("\x1f".join(map(str, examples.labels)).encode())
    return hasher.hexdigest()


def data_version(silo: str, data: SiloData) -> str:
    """The silo's data version: its rows (train, then test) keyed by its own secret."""
    parts = (data.train, data.test) + ((data.validation,) if data.validation is not None else ())
    return _digest(silo_secret(silo), *parts)


def rows_version(silo: str, data: SiloData) -> str:
    """The silo's rows as a set, keyed by its own secret: the same whatever seed or test fraction
    split them (the DP budget is kept per rows, so a changed split cannot start a fresh one)."""
    key, rows = silo_secret(silo), []
    for part in (data.train, data.test, data.validation):
        if part is None:
            continue
        for row, label in zip(part.inputs, part.labels, strict=True):
            content = row.tobytes() if part.is_image else str(row).encode()
            rows.append(hashlib.sha256(content + b"\x1f" + str(label).encode()).hexdigest())
    return hmac.new(key, "".join(sorted(rows)).encode(), digestmod="sha256").hexdigest()


def stated_count(scenario: Scenario, silo: str, true_count: int, version: str) -> int:
    """The training count the silo states: exact, or under DP-SGD its noised count (privacy.dp.count_noise),
    drawn once per data version and noise level and kept, so every report repeats one release."""
    dp = scenario.privacy.dp
    if dp is None:
        return true_count
    path = state_folder(silo) / f"dp-count-{version[:32]}-{dp.count_noise:g}.txt"
    return int(keep_once(path, lambda: str(draw_count(true_count, dp.count_noise)).encode()))


def summarize(scenario: Scenario, silo: str) -> DataSummary:
    """Load and split a silo's data and describe it; needs only this silo's own data.

    Under DP-SGD the counts are totals: the noised training count and the test split's size (the
    test split is scored exactly, so its size is no secret from the coordinator).
    """
    data = load_silo_data(scenario, silo)
    _check_named_labels(scenario, silo, data)
    version = data_version(silo, data)
    shape = data.train.input_shape
    if scenario.privacy.dp:
        from fedsilo.privacy.budget_ledger import charge_count_release

        charge_count_release(silo, rows_version(silo, data), version, scenario.privacy.dp)
        train = {ALL_LABELS: stated_count(scenario, silo, len(data.train), version)}
        return DataSummary(silo, train, {ALL_LABELS: len(data.test)}, shape, version)
    return DataSummary(silo, data.train.label_counts(), data.test.label_counts(), shape, version)


def _check_named_labels(scenario: Scenario, silo: str, data) -> None:
    """When the scenario names its labels, a silo whose rows hold others declines at prepare,
    naming them: one silo's data must not change the model's head for everyone."""
    named = scenario.data.labels
    if not named:
        return
    held = {str(label) for split in (data.train, data.test) for label in split.label_counts()}
    other = sorted(held - {str(label) for label in named})
    if other:
        raise SiloDeclined(
            f"silo {silo}: its data holds labels {other[:10]} that data.labels does not name; "
            "relabel them or add them to the scenario"
        )


def with_local_data(scenario: Scenario, silo: str, path: str) -> Scenario:
    """The scenario as a silo's worker sees it: this silo's rows come from its own file at `path`.

    A silo's data location is the silo's business (its worker's flags or environment), so the
    coordinator never sends or needs it. Table columns follow the scenario's shared source.
    """
    raw = scenario.model_dump(mode="json")
    spec = next(s for s in raw["silos"] if s["name"] == silo)
    spec["data"] = source_for_file(path, raw["data"]["source"])
    return Scenario.model_validate(raw)


@dataclass(frozen=True)
class Sent:
    """What a fit's upload hook sent: a weight reference, or under secure aggregation a public
    key for the masking step (and how many coordinates were clipped to its range)."""

    update: WeightRef | None
    public_key: str = ""
    clipped: int = 0
    update_norm: float = 0.0


class Training(Protocol):
    """How a silo trains in a round: plain SGD, or DP-SGD with the budget it keeps."""

    def budget(self, silo: "SiloParticipant", settings: FitSettings, round_index: int) -> float | None:
        """The privacy spent after this round, or None; raises SiloDeclined to decline it."""
        ...

    def train(
        self, silo: "SiloParticipant", settings: FitSettings, progress: Progress | None
    ) -> tuple[float, int]:
        """Train `silo.model` in place; returns the mean loss and the optimizer steps taken."""
        ...

    def release(self, report: FitReport) -> FitReport:
        """The reply as it may leave the silo: DP-SGD leaves out what its noise does not cover."""
        ...


Upload = Callable[["SiloParticipant", State, str, dict], Sent]


class PlainTraining:
    """Local training with the scenario's optimizer; no budget."""

    def budget(self, silo: "SiloParticipant", settings: FitSettings, round_index: int) -> None:
        return None

    def train(self, silo: "SiloParticipant", settings: FitSettings, progress: Progress | None):
        return fit(silo.model, silo.train, settings, progress), settings.total_steps(silo.num_examples)

    def release(self, report: FitReport) -> FitReport:
        return report


def plain_upload(silo: "SiloParticipant", global_state: State, update_uri: str, config: dict) -> Sent:
    """The local weights (or their 16-bit change) written to `update_uri`."""
    wire = to_wire(silo.outgoing(global_state), global_state, silo.scenario.federation.transfer_dtype)
    return Sent(write_state(wire, update_uri))


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
        self.validation = (
            encode(data.validation, self.labels, scenario.model, silo, tokenizer)
            if data.validation is not None
            else None
        )
        self.input_shape = data.train.input_shape
        self.version = data_version(silo, data)
        self.rows_version = rows_version(silo, data)
        self.model = pretrained_model(scenario, len(self.labels), self.input_shape)
        self.personal = PersonalStore(silo, scenario.federation.personal_layers)
        self.control = ControlVariate(silo)  # SCAFFOLD's c_i, when the strategy asks for it
        self.ditto = PersonalModel(silo)  # with evaluation.personalization: ditto
        self._plain: torch.nn.Module | None = None  # under LoRA, for full weights (a champion)

    @property
    def num_examples(self) -> int:
        """The training count this silo states (its FedAvg weight): exact, or under DP-SGD the
        noised count it released at prepare."""
        return stated_count(self.scenario, self.silo, len(self.train), self.version)

    def load(self, state: State, job: str = "", before_round: int | None = None) -> None:
        """Put exchanged weights into the model, with this silo's own personal layers for `job`
        (those it had before round `before_round`, when given)."""
        load_shared(self.model, self.personal.spliced(job, state, before_round))

    def outgoing(self, global_state: State) -> State:
        """What the silo sends of its model: personal layers carry the global model's values."""
        return with_global_values(shared_state(self.model), global_state, self.personal.patterns)

    def evaluate(self, ref: WeightRef, job: str = "") -> Evaluation:
        """Evaluate the weights at `ref` on this silo's test split: what silos exchange (with its
        personal layers for `job`), or under LoRA also a plain model's full weights (a registered
        champion, merged)."""
        state = read_state(ref)
        if is_lora(self.model) and not any("lora_" in name for name in state):
            plain = self._plain_model()
            plain.load_state_dict(state)
            return self._evaluate_with(plain)
        self.load(state, job)
        return self._evaluate_current()

    def _plain_model(self) -> torch.nn.Module:
        if self._plain is None:
            spec, seed = plain_spec(self.scenario.model), self.scenario.federation.seed
            self._plain = build_model(spec, len(self.labels), self.input_shape, seed)
        return self._plain

    def evaluate_models(self, models: dict[str, WeightRef], job: str = "") -> Scores:
        """Every named model on this silo's test split, in one step."""
        return Scores(self.silo, {name: self.evaluate(ref, job) for name, ref in models.items()})

    def validation_confusion(self) -> list[list[int]]:
        """The confusion counts of the model as loaded on this silo's validation rows."""
        probs = predict(self.model, self.validation, EVAL_BATCH_SIZE)
        return classification_metrics(self.validation.labels.numpy(), probs)["confusion"]

    def _evaluate_current(self) -> Evaluation:
        return self._evaluate_with(self.model)

    def _evaluate_with(self, model: torch.nn.Module) -> Evaluation:
        probs = predict(model, self.test, EVAL_BATCH_SIZE)
        return Evaluation(self.silo, **classification_metrics(self.test.labels.numpy(), probs))

    def settings(
        self, seed_key: int, steps: int | None, config: dict[str, float] | None = None
    ) -> FitSettings:
        """The scenario's local training settings, seeded for this silo and `seed_key`."""
        return self._settings(seed_key, steps, config or {})

    def on_course(self, settings: FitSettings, round_index: int | None = None) -> FitSettings:
        """`settings` on the scenario's learning-rate schedule: as round `round_index` of the job's
        rounds (one course across them), or as a fit with a course of its own (None)."""
        federation = self.scenario.federation
        if federation.learning_rate_schedule == "constant":
            return settings
        fits, index = (federation.rounds, round_index) if round_index else (1, 1)
        # the stated count: under DP-SGD the noised one its steps come from, not the exact one
        return settings.along(self.num_examples, federation.warmup_fraction, fits, index)

    def _settings(self, seed_key: int, steps: int | None, config: dict[str, float]) -> FitSettings:
        federation = self.scenario.federation
        silo_index = self.scenario.silo_names().index(self.silo)
        return FitSettings(
            epochs=federation.epochs,
            batch_size=federation.batch_size,
            learning_rate=federation.learning_rate,
            optimizer=federation.optimizer,
            seed=int(np.random.SeedSequence([federation.seed, seed_key, silo_index]).generate_state(1)[0]),
            steps=steps,
            proximal_mu=float(config.get("proximal_mu", 0.0)),
        )

    def fit(
        self,
        ref: WeightRef,
        round_index: int,
        update_uri: str,
        progress: Progress | None = None,
        config: dict[str, float] | None = None,
        training: "Training | None" = None,
        upload: "Upload | None" = None,
        extra: WeightRef | None = None,
    ) -> FitReport:
        """Start from the global weights at `ref`, train locally with the strategy's `config`
        (e.g. FedProx's proximal_mu) and send the update through `upload` to `update_uri`.

        `training` (plain, or DP-SGD with its budget) and `upload` (a plain file, or kept for
        secure aggregation's masking step) are the hooks privacy mechanisms plug in; a training
        hook that declines (SiloDeclined) gives a reply with no update that says why. Every reply
        goes out through the hook's `release`.
        """
        started = time.perf_counter()
        config = config or {}
        training, upload = training or PlainTraining(), upload or plain_upload
        settings = self._settings(round_index, self.scenario.federation.local_steps, config)
        settings = self.on_course(settings, round_index)
        global_state = read_state(ref)  # read (checksum checked) before any budget is charged
        try:
            spent = training.budget(self, settings, round_index)
        except SiloDeclined as exc:
            return training.release(
                self._declined(round_index, str(exc), getattr(exc, "spent", None), started)
            )
        job = update_uri.rsplit("/", 2)[0]  # <root>/round-NNN/<silo>.safetensors
        for store in (self.personal.rounds, self.control.rounds, self.ditto.rounds):
            store.forget_from(job, round_index)  # an earlier try of this round, or of a same-named job
        self.load(global_state, job, before_round=round_index)
        server = read_state(extra) if extra is not None else {}
        skip = personal_names(self.personal.patterns, global_state)
        args = (self.control, self.model, settings, config, server, job, round_index, skip)
        settings, scaffold = ScaffoldRound.begin(*args)
        train_loss, steps = training.train(self, settings, progress)
        if scaffold is not None:
            scaffold.finish(steps)
        self.personal.remember(job, round_index, shared_state(self.model))
        local = self._evaluate_current()
        sent = upload(self, global_state, update_uri, config)
        if self.scenario.evaluation.personalization == "ditto":
            self.ditto.train(self, job, round_index, global_state, progress)
        report = FitReport(
            self.silo,
            round_index,
            sent.update,
            self.num_examples,
            train_loss,
            local,
            time.perf_counter() - started,
            steps,
            epsilon=spent,
            public_key=sent.public_key,
            clipped=sent.clipped,
            update_norm=sent.update_norm,
        )
        return training.release(report)

    def _declined(self, round_index: int, reason: str, spent: float | None, started: float) -> FitReport:
        elapsed = time.perf_counter() - started
        nan = float("nan")
        return FitReport(
            self.silo, round_index, None, self.num_examples, nan, None, elapsed, 0, spent, refused=reason
        )

    def personalize(
        self, ref: WeightRef, steps: int, progress: Progress | None = None, job: str = ""
    ) -> Evaluation:
        """Fine-tune the global weights at `ref` for `steps` steps on this silo's own training split
        and score the result on its own test split; the personalized weights never leave the silo."""
        self.load(read_state(ref), job)
        fit(self.model, self.train, self.on_course(self._settings(PERSONALIZE_SEED_KEY, steps, {})), progress)
        return self._evaluate_current()


_participants: dict[tuple[str, str], SiloParticipant] = {}
_built = [0]  # participants built by this process, for the logs of a silo's job run


def participant(scenario: Scenario, silo: str) -> SiloParticipant:
    """This process's participant for a silo, built once per scenario and kept across rounds.

    Naming the labels (as the coordinator does before round 0) does not change which participant
    serves: they are the labels it derived from the same data.
    """
    key = (scenario.model_dump_json(exclude={"data": {"labels"}}), silo)
    if key not in _participants:
        _participants[key] = SiloParticipant(scenario, silo)
        _built[0] += 1
    return _participants[key]


def participants_built() -> int:
    """How many participants this process has built so far (each one loads data and a model)."""
    return _built[0]


def release_participants() -> None:
    """Free the models and data held for finished jobs."""
    _participants.clear()


def model_card(scenario: Scenario, input_shape: tuple[int, ...]) -> dict:
    """What a logged model needs to be rebuilt elsewhere: its spec, label names and input shape.

    `scenario` has its labels resolved (see federation.with_labels); no silo data is read.
    """
    spec = scenario.model
    return {
        "model": plain_spec(spec).model_dump(),  # what is logged is a plain model, adapters merged
        "lora": spec.lora.model_dump() if spec.lora else None,
        "labels": list(scenario.data.labels),
        "input_shape": list(input_shape),
    }


def pretrained_model(scenario: Scenario, num_labels: int, input_shape: tuple[int, ...]) -> torch.nn.Module:
    """The pretrained model with a seeded new head: the same in every silo and in the coordinator."""
    return build_model(scenario.model, num_labels, input_shape, scenario.federation.seed)


def initial_state(scenario: Scenario, input_shape: tuple[int, ...]) -> State:
    """The global model before round 1, built by the coordinator from the model spec alone."""
    return shared_state(pretrained_model(scenario, len(scenario.data.labels), input_shape))
