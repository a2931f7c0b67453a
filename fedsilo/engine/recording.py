"""What a round records: the global model (with the strategy's state, and under LoRA the merged
plain model), the job's and each silo's metrics linked to it, and what the reporters are told."""

import math
import tempfile
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file

from fedsilo.engine.champion import per_silo_median
from fedsilo.engine.influence import bounded_union
from fedsilo.messages import Evaluation, FitReport, WeightRef
from fedsilo.modeling import full_state
from fedsilo.records import ADAPTER, VALIDATION_ACCURACY, RoundRecord
from fedsilo.scenario import Scenario
from fedsilo.weights import local_path, to_bytes


def silo_metrics(
    evaluations: list[Evaluation], fits: list[FitReport], privacy: dict[str, dict]
) -> dict[str, dict[str, float]]:
    """Each silo's metrics for its run: the global model on its test split, its local training."""
    per_silo = {e.silo: {"global_accuracy": e.accuracy, "global_f1_macro": e.f1_macro} for e in evaluations}
    for fit in fits:
        per_silo.setdefault(fit.silo, {}).update(
            local_accuracy=fit.local.accuracy,
            local_f1_macro=fit.local.f1_macro,
            train_loss=fit.train_loss,
            num_examples=fit.num_examples,
            fit_seconds=fit.seconds,
            fit_steps=fit.steps,
        )
        if fit.public_key:  # secure aggregation: coordinates the silo clipped to the range
            per_silo[fit.silo]["clipped_coordinates"] = fit.clipped
    for silo, values in privacy.items():
        per_silo.setdefault(silo, {}).update(values)
    return {silo: {k: v for k, v in values.items() if _finite(v)} for silo, values in per_silo.items()}


def _finite(value) -> bool:
    """Only finite numbers are logged (a NaN loss under DP-SGD is not sent, not zero)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class RoundRecorder:
    """Logs rounds through the tracker; builds what reporters are told."""

    def __init__(
        self,
        scenario: Scenario,
        tracker,
        input_shape: tuple[int, ...],
        meta: dict,
        test_cap: int | None = None,
    ):
        self.scenario, self.tracker, self.input_shape, self.meta = scenario, tracker, input_shape, meta
        self.test_cap = test_cap  # the most one silo's test split weighs in the union

    def union(self, evaluations: list[Evaluation]) -> dict[str, float]:
        """accuracy, f1_macro and loss over the silos' test splits, each weighing at most the cap:
        every union fedsilo logs (global, kept, alone, personalized) is taken this way."""
        return bounded_union(evaluations, self.test_cap)

    def record(
        self,
        round_index: int,
        current: WeightRef,
        evaluations: list[Evaluation],
        fits: list[FitReport],
        figures: dict[str, float],
        per_silo: dict[str, dict[str, float]],
        left_out: list[str],
        strategy_state: dict,
    ) -> tuple[RoundRecord, str | None]:
        """Log one round (global model with the strategy's state, metrics linked to it)."""
        union = self.union(evaluations)
        job = {f"global_{k}": v for k, v in union.items()} | figures | {"silos_evaluated": len(evaluations)}
        job = {k: v for k, v in job.items() if _finite(v)}
        for metric in ("accuracy", "f1_macro"):  # each silo one vote, beside the example-weighted union
            job[f"global_{metric}_median"] = per_silo_median(evaluations, metric)
        if round_index > 0:
            for silo in self.scenario.silo_names():
                per_silo.setdefault(silo, {})["answered"] = float(silo not in left_out)
        model_id = self._log_model(round_index, current, strategy_state)
        self.tracker.log_round(round_index, job, per_silo, model_id)
        record = RoundRecord(
            round_index,
            self.scenario.federation.rounds,
            union["accuracy"],
            silo_local={f.silo: f.local.accuracy for f in fits},
            silo_global={e.silo: e.accuracy for e in evaluations},
            seconds=figures.get("round_seconds", 0.0),
            missing=list(left_out),
            validation_accuracy=figures.get(VALIDATION_ACCURACY),
        )
        return record, model_id

    def _log_model(self, round_index: int, current: WeightRef, strategy_state: dict) -> str | None:
        if not self.scenario.tracking.log_models:
            return None
        with tempfile.TemporaryDirectory() as scratch:
            extra_files = {}
            if strategy_state:
                path = Path(scratch, "strategy_state.safetensors")
                path.write_bytes(to_bytes(strategy_state))
                extra_files[path.name] = str(path)
            weights = local_path(current, scratch)
            if self.scenario.model.lora is not None:  # register the merged model, keep the adapters
                extra_files[ADAPTER] = weights
                weights = self.merged_file(weights, scratch, round_index)
            return self.tracker.log_global_model(round_index, weights, self.meta, extra_files)

    def merged_file(self, adapter_path: str, scratch: str, round_index: int) -> str:
        """Under LoRA, the plain model with the adapters at `adapter_path` merged in, as a file."""
        shared = load_file(adapter_path)
        labels = len(self.scenario.data.labels)
        full = full_state(
            self.scenario.model, labels, self.input_shape, self.scenario.federation.seed, shared
        )
        path = Path(scratch, f"merged-{round_index:03d}.safetensors")
        path.write_bytes(to_bytes(full))
        return str(path)


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


def summary(result, origin: str, evaluation) -> str:
    """The job's closing line for reporters: where it started, where it ended, the champion."""
    decision = ""
    if result.registered_version:
        moved = "moved to" if result.champion else "stays; not moved to"
        decision = (
            f"\n\n**Champion**: {moved} {result.registered_model} v{result.registered_version}, "
            f"because {result.champion_reason}."
        )
    kept_round = ""
    if result.kept_round not in (None, result.rounds):
        kept_round = f" (round {result.kept_round}, the best on the silos' validation rows)"
    personalized = ""
    if result.personalized:
        values = ", ".join(f"{s} {a:.3f}" for s, a in result.personalized.items())
        personalized = f" Personalized ({evaluation.personalized_by}): {values}."
    return (
        f"Started from the {origin}. Initial accuracy {result.initial_accuracy:.3f}, final "
        f"{result.final_accuracy:.3f}{kept_round}.{personalized} Experiment `{result.experiment}`, run "
        f"`{result.parent_run_id}`.{decision}{kept_table(result)}"
    )


def kept_table(result) -> str:
    """Is joining worth it, per silo, in Markdown: the model it keeps beside its alone model."""
    if not result.kept:
        return ""
    lines = [
        "",
        "",
        "| silo | keeps | kept accuracy | alone accuracy | gain from joining |",
        "|---|---|--:|--:|--:|",
    ]
    for silo, choice in sorted(result.kept.items()):
        kept, alone = result.kept_accuracy.get(silo), result.alone_accuracy.get(silo)
        gain = f"{100 * (kept - alone):+.1f} points" if None not in (kept, alone) else "-"
        cells = [silo, choice, _percent(kept), _percent(alone), gain]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def tag_left_out(tracker, notify, round_index: int, outcome, step: str = "") -> None:
    """Name the silos left out of a round's step, one tag per word (absent, declined, refused),
    on the parent run and each such silo's run, and tell the reporters."""
    suffix = f".{step}" if step else ""
    tags = {f"fedsilo.absent.round_{round_index}{suffix}": ",".join(outcome.absent)} if outcome.absent else {}
    for word, reasons in (("declined", outcome.declined), ("refused", outcome.refused)):
        for silo, reason in reasons.items():
            tracker.set_tags({f"fedsilo.{word}.round_{round_index}{suffix}": reason[:5000]}, silo=silo)
        if reasons:
            joined = "; ".join(f"{silo}: {why}" for silo, why in sorted(reasons.items()))
            tags[f"fedsilo.{word}.round_{round_index}{suffix}"] = joined[:5000]
    if tags:
        tracker.set_tags(tags)
    for silo, reason in sorted(outcome.left_out().items()):
        detail = {"silo": silo, "round": str(round_index), "reason": reason, "step": step or "fit"}
        notify("event", "fedsilo.silo.left-out", detail)


def update_bytes(current: WeightRef, receivers: int, sent: list[WeightRef]) -> int:
    """Bytes that crossed silo boundaries in a round: the global model out to each silo that
    answered, and what they sent back (updates, or masked vectors under secure aggregation)."""
    return receivers * current.size + sum(ref.size for ref in sent)
