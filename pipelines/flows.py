"""The coordinator flow `federated-training`: the one place where the round loop lives.

Round 0 evaluates the pretrained model; each round r then fits every silo from the global
model, aggregates the updates that arrived (at least `min_silos`), evaluates the new global
model on every silo's test split and logs the round to MLflow.
"""

import os
import time
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from fedsilo import federation
from fedsilo.federation import JobPaths
from fedsilo.scenario import Scenario
from fedsilo.silo import model_card
from fedsilo.tracking import FederationTracker, model_weights_path
from fedsilo.weights import WeightRef, delete_state, local_path, ref_for
from pipelines.report import RoundRow, markdown, print_round
from pipelines.tasks import aggregate, evaluate_silo, fit_silo, initial_global, prepare_silo


class JobResult(BaseModel):
    """What a federated job produced, returned by the flow and printed by the CLI."""

    job: str
    experiment: str
    parent_run_id: str
    tracking_uri: str
    rounds: int
    initial_accuracy: float
    final_accuracy: float
    registered_model: str | None = None
    registered_version: str | None = None  # MLflow version number, as a string
    champion: bool = False
    champion_reason: str = ""


def _workdir() -> Path:
    return Path(os.environ.get("FEDSILO_WORKDIR", ".fedsilo/jobs"))


def _evaluate_all(scenario: Scenario, weights: WeightRef, label: str):
    return [evaluate_silo(scenario, silo, weights, label) for silo in scenario.silo_names()]


def _fit_round(scenario: Scenario, round_index: int, current: WeightRef, paths: JobPaths):
    """Fit every silo; return the reports that arrived and the silos that did not answer.

    Embedded silos run one after another in this process: they share its cores and torch's RNG,
    and a task in the main thread is one that Prefect's timeout can interrupt.
    """
    fit = fit_silo.with_options(
        retries=scenario.federation.silo_retries, timeout_seconds=scenario.federation.silo_timeout_seconds
    )
    reports, missing = [], []
    for silo in scenario.silo_names():
        state = fit(
            scenario, silo, round_index, current, paths.update_uri(round_index, silo), return_state=True
        )
        if state.is_completed():
            reports.append(state.result())
        else:
            missing.append(silo)
            get_run_logger().warning("round %d: silo %s did not answer: %s", round_index, silo, state.message)
    return reports, missing


def _record_round(tracker, scenario, round_index, current, evaluations, reports, extra, meta, missing=()):
    """Log one round to MLflow (global model, metrics linked to it) and print its table."""
    union = federation.global_metrics(evaluations, len(meta["labels"]))
    parent = {f"global_{k}": v for k, v in union.items()} | extra
    per_silo = {e.silo: {"global_accuracy": e.accuracy, "global_f1_macro": e.f1_macro} for e in evaluations}
    for report in reports:
        per_silo[report.silo] |= {
            "local_accuracy": report.local.accuracy,
            "local_f1_macro": report.local.f1_macro,
            "train_loss": report.train_loss,
            "num_examples": report.num_examples,
            "fit_seconds": report.seconds,
        }
    model_id = None
    if scenario.tracking.log_models:
        model_id = tracker.log_global_model(round_index, local_path(current), meta)
    tracker.log_round(round_index, parent, per_silo, model_id)
    row = RoundRow(
        round_index,
        union["accuracy"],
        silo_local={r.silo: r.local.accuracy for r in reports},
        silo_global={e.silo: e.accuracy for e in evaluations},
        seconds=extra.get("round_seconds", 0.0),
        missing=list(missing),
    )
    print_round(row, scenario.silo_names())
    return union, model_id, row


def _champion_decision(scenario, tracker, final_union, num_classes):
    """Evaluate the current champion on this job's test data; decide whether the new model wins.

    Only a champion that cannot load into this model (other labels or architecture) is replaced
    without a comparison; one that cannot be read at all is kept, never replaced on doubt.
    """
    metric = scenario.evaluation.metric
    current = tracker.champion()
    if current is None:
        return True, f"first registered model ({metric} {final_union[metric]:.4f})"
    version, model_uri = current
    try:
        ref = ref_for(Path(model_weights_path(model_uri)).as_uri())
    except Exception as exc:  # registry or artifact store unreachable, files missing
        return False, f"champion v{version} could not be read ({exc}); champion kept"
    try:
        champion_union = federation.global_metrics(_evaluate_all(scenario, ref, "champion"), num_classes)
    except RuntimeError:  # load_state_dict: the champion's tensors do not fit this model
        return True, f"champion v{version} has another architecture or label set; replaced"
    new, old = final_union[metric], champion_union[metric]
    if federation.beats(new, old):
        return True, f"{metric} {new:.4f} >= champion v{version}'s {old:.4f} on the same test data"
    return False, f"{metric} {new:.4f} < champion v{version}'s {old:.4f} on the same test data; champion kept"


@flow(
    name="federated-training",
    description="FedAvg fine-tuning of one shared model across silos, tracked in MLflow.",
    log_prints=True,
)
def federated_training(scenario: Scenario, job_name: str | None = None) -> JobResult:
    logger = get_run_logger()
    silos = scenario.silo_names()
    job = job_name or f"{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    paths = JobPaths.under(_workdir(), job)
    tracker = FederationTracker(scenario, job)
    tracker.start()
    logger.info(
        "job %s: %d silos, %d rounds; MLflow run %s",
        job,
        len(silos),
        scenario.federation.rounds,
        tracker.parent_id,
    )
    try:
        for summary in [prepare_silo(scenario, s) for s in silos]:
            tracker.log_data(summary)
        meta = model_card(scenario)
        strategy = federation.strategy_for(scenario)
        current = initial_global(scenario, paths.global_uri(0))

        evaluations = _evaluate_all(scenario, current, "round-0")
        initial, model_id, row = _record_round(tracker, scenario, 0, current, evaluations, [], {}, meta)
        union, rows = initial, [row]
        for round_index in range(1, scenario.federation.rounds + 1):
            started = time.perf_counter()
            reports, missing = _fit_round(scenario, round_index, current, paths)
            federation.check_quorum(scenario, [r.silo for r in reports], round_index)
            previous = current
            current = aggregate(strategy, current, reports, round_index, paths.global_uri(round_index))
            exchanged = federation.update_bytes(reports)
            for ref in [r.update for r in reports] + [previous]:
                delete_state(ref)
            evaluations = _evaluate_all(scenario, current, f"round-{round_index}")
            if missing:
                tracker.set_tags({f"fedsilo.missing.round_{round_index}": ",".join(missing)})
            extra = {
                "round_seconds": time.perf_counter() - started,
                "bytes_exchanged": exchanged,
                "silos_answered": len(reports),
            }
            union, model_id, row = _record_round(
                tracker, scenario, round_index, current, evaluations, reports, extra, meta, missing
            )
            rows.append(row)

        result = JobResult(
            job=job,
            experiment=scenario.experiment_name,
            parent_run_id=tracker.parent_id,
            tracking_uri=tracker.tracking_uri,
            rounds=scenario.federation.rounds,
            initial_accuracy=initial["accuracy"],
            final_accuracy=union["accuracy"],
        )
        if model_id:
            promote, reason = _champion_decision(scenario, tracker, union, len(meta["labels"]))
            result.registered_model = scenario.registered_model_name
            result.registered_version = tracker.register(model_id, promote, reason)
            result.champion, result.champion_reason = promote, reason
            logger.info(
                "registered %s version %s: %s", result.registered_model, result.registered_version, reason
            )
            delete_state(current)  # MLflow holds it now; job folders stay small
        footer = (
            f"Initial accuracy {initial['accuracy']:.3f}, final {union['accuracy']:.3f}. "
            f"MLflow experiment `{scenario.experiment_name}`, run `{tracker.parent_id}`."
        )
        create_markdown_artifact(
            markdown(scenario.name, rows, silos, footer),
            key=f"{scenario.name}-rounds",
            description=f"Accuracy by round of job {job}",
        )
        tracker.finish("FINISHED")
        return result
    except BaseException:
        tracker.finish("FAILED")
        raise


__all__ = ["JobResult", "federated_training"]
