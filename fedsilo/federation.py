"""Coordinator-side steps of a round, as plain functions; the loop itself is fedsilo.coordinator."""

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedsilo import artifacts, transfer
from fedsilo.data import order_labels
from fedsilo.messages import DataSummary, Evaluation, FitReport, MaskedUpdate, WeightRef
from fedsilo.metrics import union_metrics
from fedsilo.privacy import central, secagg
from fedsilo.scenario import CentralDPSpec, Scenario
from fedsilo.strategies import SiloUpdate, Strategy, WeightedSum
from fedsilo.validation import Layout, UpdateRefused, check_update
from fedsilo.weights import ChecksumError, file_dtypes, read_state, write_state


class FederationError(Exception):
    """A round cannot go on (too few silos answered); the message names them."""


@dataclass(frozen=True)
class JobPaths:
    """Where one job's exchanged files live in the shared store (a folder URL or MLflow artifacts).

    `<root>/global-003.safetensors`, `<root>/round-003/<silo>.safetensors`, and under secure
    aggregation `<root>/round-003/masked-<attempt>/<silo>.safetensors`.
    """

    root: str

    def global_uri(self, round_index: int) -> str:
        return f"{self.root}/global-{round_index:03d}.safetensors"

    def update_uri(self, round_index: int, silo: str) -> str:
        return f"{self.root}/round-{round_index:03d}/{silo}.safetensors"

    def local_uri(self, round_index: int, silo: str) -> str:
        """A silo's local weights rebuilt from the change it sent (for the silo x silo matrix)."""
        return f"{self.root}/round-{round_index:03d}/{silo}-local.safetensors"

    def masked_uri(self, round_index: int, attempt: int, silo: str) -> str:
        return f"{self.root}/round-{round_index:03d}/masked-{attempt}/{silo}.safetensors"

    def champion_uri(self) -> str:
        return f"{self.root}/champion.safetensors"

    @classmethod
    def under(cls, folder: str | Path, job_id: str) -> "JobPaths":
        """A job's folder under a local directory or a store URL (s3://, mlflow-artifacts:/...)."""
        text = str(folder)
        if artifacts.is_url(text):
            return cls(f"{text.rstrip('/')}/{job_id}")
        return cls(Path(text).resolve().joinpath(job_id).as_uri())


def with_labels(scenario: Scenario, summaries: list[DataSummary]) -> Scenario:
    """The scenario with `data.labels` fixed, from the silos' data summaries when not named.

    Every participant must agree on the model's output order, and in distributed mode no process
    sees every silo's data, so the coordinator settles it once from the label counts silos report.
    """
    seen = {label for s in summaries for label in (*s.train_counts, *s.test_counts)}
    labels = order_labels(scenario, seen)
    if scenario.data.labels == labels:
        return scenario
    raw = scenario.model_dump(mode="json")
    raw["data"]["labels"] = labels
    return Scenario.model_validate(raw)


def input_shape(summaries: list[DataSummary]) -> tuple[int, ...]:
    """The image shape all silos share (empty for text); silos that disagree are named."""
    shapes = {tuple(s.input_shape) for s in summaries}
    if len(shapes) > 1:
        detail = ", ".join(f"{s.silo} {tuple(s.input_shape)}" for s in summaries)
        raise FederationError(f"silos hold images of different shapes ({detail}); resize them to one")
    return shapes.pop() if shapes else ()


def exchange_root(scenario: Scenario, run_artifacts: Callable[[str], str]) -> str:
    """Where a job's weights cross: the scenario's store, else the job's MLflow run artifacts
    (distributed; `run_artifacts(folder)` gives their URI) or, embedded, this process's memory
    (FEDSILO_WORKDIR names a folder instead)."""
    chosen = scenario.federation.exchange or os.environ.get("FEDSILO_EXCHANGE")
    if chosen:
        return chosen
    if scenario.federation.mode == "distributed":
        return run_artifacts("exchange")
    return os.environ.get("FEDSILO_WORKDIR") or "memory://fedsilo/jobs"


def check_quorum(
    scenario: Scenario, answered: list[str], step: str, reasons: dict[str, str] | None = None
) -> None:
    """Fail the step (e.g. "round 3"), naming the missing silos and, where known, why they were
    left out, when fewer than `min_silos` answered."""
    if len(answered) < scenario.min_silos:
        missing = sorted(set(scenario.silo_names()) - set(answered))
        named = [f"{silo} ({reasons[silo]})" if reasons and silo in reasons else silo for silo in missing]
        raise FederationError(
            f"{step}: only {len(answered)} of {len(scenario.silos)} silos answered "
            f"(min_silos is {scenario.min_silos}); missing: {', '.join(named)}"
        )


@dataclass(frozen=True)
class UpdateRules:
    """What the coordinator holds each silo's update to (see fedsilo.validation)."""

    trained_on: dict[str, int]  # each silo's training count, from its data summary
    max_norm: float | None = None
    central_dp: CentralDPSpec | None = None  # clip each update, noise the sum (client-level DP)
    clipping_range: float | None = None  # secure aggregation's per-coordinate range; None: off
    transfer_dtype: str = "float32"  # 16 bits: updates arrive as changes from the global model

    @classmethod
    def of(cls, scenario: Scenario, summaries: list[DataSummary]) -> "UpdateRules":
        privacy = scenario.privacy
        return cls(
            {s.silo: s.num_train for s in summaries},
            scenario.federation.max_update_norm,
            privacy.central_dp,
            privacy.clipping_range if privacy.secure_aggregation else None,
            scenario.federation.transfer_dtype,
        )

    def encoding(self) -> secagg.Encoding:
        """Secure aggregation's fixed point: the weights of every silo that could answer bound the sum."""
        bound = len(self.trained_on) if self.central_dp else sum(self.trained_on.values())
        return secagg.Encoding(self.clipping_range, bound)

    def weight_of(self, silos: list[str]) -> int:
        """The most the given silos' weights can add up to (1 each under central DP)."""
        return len(silos) if self.central_dp else sum(self.trained_on.get(s, 0) for s in silos)


def aggregate(
    strategy: Strategy, current: WeightRef, reports: list[FitReport], out_uri: str, rules: UpdateRules
) -> tuple[WeightRef | None, dict[str, str]]:
    """The strategy's next global model from the silos' updates, each read, verified and checked
    once (an untrusted update never reaches the strategy).

    An update that fails its checksum or `check_update` is left out; the second value maps such
    silos to the reason. With no update left, no new global is written and the first value is None.
    """
    rejected: dict[str, str] = {}
    global_state = read_state(current)
    layout = Layout.of(global_state)

    def updates():
        for report in reports:
            if report.silo not in rules.trained_on:
                rejected[report.silo] = (
                    "it did not describe its data at prepare, so its count cannot be checked"
                )
                continue
            try:
                state = transfer.from_wire(read_state(report.update), global_state, rules.transfer_dtype)
                check_update(
                    state,
                    report.num_examples,
                    global_state,
                    layout,
                    rules.trained_on.get(report.silo),
                    rules.max_norm,
                )
            except (ChecksumError, UpdateRefused) as exc:
                rejected[report.silo] = str(exc)
                continue
            except Exception as exc:  # bytes that are not a safetensors file, a store error
                rejected[report.silo] = f"unreadable update at {report.update.uri}: {exc}"
                continue
            yield SiloUpdate(report.silo, state, report.num_examples)

    stream = updates()
    first = next(stream, None)
    if first is None:
        return None, rejected
    stream = itertools.chain([first], stream)
    if rules.central_dp is not None:
        state = _central_dp_mean(strategy, global_state, stream, rules.central_dp)
    else:
        state = strategy.aggregate(global_state, stream)
    return write_state(state, out_uri), rejected


def _central_dp_mean(strategy: Strategy, current, updates, spec: CentralDPSpec):
    """Each update clipped to `clipping_norm` and counted once; Gaussian noise on the mean."""
    total = WeightedSum()
    for update in updates:
        clipped, _ = central.clip_to_norm(update.state, current, spec.clipping_norm)
        total.add(clipped, 1)
    mean = total.mean()
    delta_sum = {
        n: (mean[n].double() - current[n].double()) * total.count for n in secagg.float_names(current)
    }
    return _noised_step(strategy, current, mean, delta_sum, total.count, spec)


def _noised_step(
    strategy: Strategy, current, average, delta_sum, total_weight: int, spec: CentralDPSpec | None
):
    """The strategy's step from sum_k w_k delta_k: noised first under central DP, then divided by
    the total weight. Integer tensors keep `average`'s values."""
    if spec is not None:
        std = spec.noise_multiplier * spec.clipping_norm
        delta_sum = central.add_noise(delta_sum, std, central.noise_generator())
    average = dict(average)
    for name, value in delta_sum.items():
        average[name] = (current[name].double() + value / total_weight).to(current[name].dtype)
    return strategy.apply(current, average)


def materialize(sent: WeightRef, base: WeightRef, dtype: str, out_uri: str) -> WeightRef:
    """A silo's full weights from what it sent (a 16-bit change from `base`), written to `out_uri`."""
    return write_state(transfer.from_wire(read_state(sent), read_state(base), dtype), out_uri)


def fit_reply_problem(report: FitReport, secure: bool) -> str | None:
    """Why a silo's fit reply cannot take part in the round, or None: it declined (its privacy
    budget), it does not fit the round's mode (an update where only a key belongs, or none at all),
    or it claims an epsilon no accountant gives."""
    if report.refused:
        return report.refused
    if secure and report.update is not None:
        return "sent a plain update under secure aggregation"
    if secure:
        return secagg.public_key_problem(report.public_key)
    if report.update is None:
        return "sent no update"
    if report.epsilon is not None and not plausible_epsilon(report.epsilon):
        return f"reported epsilon {report.epsilon!r}"
    return None


def plausible_epsilon(epsilon: float) -> bool:
    """An epsilon an accountant can give: finite and not negative (a silo's report is untrusted)."""
    return math.isfinite(epsilon) and epsilon >= 0


def masked_problems(masked: list[MaskedUpdate], current: WeightRef) -> dict[str, str]:
    """Masked vectors that cannot enter a sum, by silo, with why: unreadable, or not one int32
    vector as long as the model's floating coordinates plus one. Their shape says nothing about an
    update, so the coordinator checks it before summing; such a silo is treated as dropped."""
    floats = ("F16", "BF16", "F32", "F64")
    expected = 1 + sum(math.prod(shape) for kind, shape in file_dtypes(current).values() if kind in floats)
    problems = {}
    for item in masked:
        try:
            header = file_dtypes(item.vector)
        except Exception as exc:  # not safetensors, a store error
            problems[item.silo] = f"unreadable masked update: {exc}"
            continue
        if header != {"masked": ("I32", (expected,))}:
            problems[item.silo] = f"a masked update must be one int32 vector of {expected} values"
    return problems


def secure_aggregate(
    strategy: Strategy, current: WeightRef, masked: list[MaskedUpdate], out_uri: str, rules: UpdateRules
) -> tuple[WeightRef | None, dict[str, str]]:
    """The next global model from one attempt's masked vectors: their sum, unmasked, decoded and
    checked (the coordinator cannot check one silo's update, only the sum of them all).

    A sum that fails (a vector unreadable or of the wrong length, weights or values no honest
    silos could produce) leaves the whole round out: every silo in it is named with the reason.
    """
    silos = sorted(m.silo for m in masked)
    global_state = read_state(current)
    try:
        vectors = [read_state(m.vector)["masked"].numpy().view("uint32") for m in masked]
        if len({v.shape for v in vectors}) != 1:
            raise secagg.SecAggError("the masked vectors differ in length")
        delta_sum, total = secagg.decode_sum(
            secagg.unmask_sum(vectors), global_state, rules.encoding(), rules.weight_of(silos)
        )
        if rules.max_norm is not None:
            mean_norm = math.sqrt(sum(float(v.pow(2).sum()) for v in delta_sum.values())) / total
            if mean_norm > rules.max_norm:
                raise secagg.SecAggError(
                    f"the mean update's norm {mean_norm:.4g} exceeds federation.max_update_norm"
                )
    except Exception as exc:  # unreadable vectors, a sum no honest silos could produce
        reason = f"the secure sum of {', '.join(silos)} was refused: {exc}"
        return None, dict.fromkeys(silos, reason)
    state = _noised_step(strategy, global_state, global_state, delta_sum, total, rules.central_dp)
    return write_state(state, out_uri), {}


def own_replies(scenario: Scenario, replies: list, step: str) -> tuple[list, list[str]]:
    """The replies of the scenario's silos, one per silo (the first); the second value describes
    each reply dropped: from a name the scenario does not have, or a second one for a silo."""
    known, kept, dropped = set(scenario.silo_names()), {}, []
    for reply in replies:
        if reply.silo not in known:
            dropped.append(f"{step}: a reply from unknown silo {reply.silo!r}")
        elif reply.silo in kept:
            dropped.append(f"{step}: a second reply for silo {reply.silo!r}")
        else:
            kept[reply.silo] = reply
    return list(kept.values()), dropped


def evaluation_problem(evaluation: Evaluation, num_labels: int) -> str | None:
    """Why a silo's evaluation cannot enter the union metrics, or None: its confusion matrix must
    be num_labels x num_labels non-negative integer counts, not all zero."""
    matrix = evaluation.confusion
    if len(matrix) != num_labels or any(len(row) != num_labels for row in matrix):
        return f"confusion matrix is not {num_labels} x {num_labels}"
    cells = [cell for row in matrix for cell in row]
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cells) or not sum(cells):
        return "confusion matrix must hold non-negative integer counts, not all zero"
    return None


def global_metrics(evaluations: list[Evaluation]) -> dict[str, float]:
    """accuracy, f1_macro and loss of one model over the union of the silos' test sets."""
    return union_metrics([e.confusion for e in evaluations], [e.loss for e in evaluations])


def update_bytes(current: WeightRef, receivers: int, sent: list[WeightRef]) -> int:
    """Bytes that crossed silo boundaries in a round: the global model out to each silo that
    answered, and what they sent back (updates, or masked vectors under secure aggregation)."""
    return receivers * current.size + sum(ref.size for ref in sent)


def champion_verdict(
    candidate: list[Evaluation], champion: list[Evaluation], metric: str, version: str
) -> tuple[bool, str]:
    """Whether the candidate takes the alias from champion `version`, and why.

    Both are scored on the test splits of the silos that evaluated both; at least as good wins.
    """
    common = {e.silo for e in candidate} & {e.silo for e in champion}
    if not common:
        return False, f"no silo could evaluate champion v{version}; champion kept"
    new = global_metrics([e for e in candidate if e.silo in common])[metric]
    old = global_metrics([e for e in champion if e.silo in common])[metric]
    where = f"on the test data of {len(common)} silos"
    if beats(new, old):
        return True, f"{metric} {new:.4f} >= champion v{version}'s {old:.4f} {where}"
    return False, f"{metric} {new:.4f} < champion v{version}'s {old:.4f} {where}; champion kept"


def beats(candidate: float, champion: float | None) -> bool:
    """Whether a candidate score is at least as good as the champion's (none: always)."""
    return champion is None or math.isnan(champion) or candidate >= champion


def silo_matrix(
    models: dict[str, list[Evaluation]], metric: str, silos: list[str] | None = None
) -> pd.DataFrame:
    """One row per model (each silo's local model, the global one), one column per silo's test
    split, in `silos` order when given (a silo that scored nothing keeps an empty column)."""
    table = pd.DataFrame(
        {model: {e.silo: getattr(e, metric) for e in evals} for model, evals in models.items()}
    )
    table = table.T
    if silos is not None:
        table = table.reindex(columns=silos)
    table.index.name = "model"
    return table
