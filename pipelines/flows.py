"""The coordinator flow `federated-training`: the one place where the round loop lives.

Round 0 evaluates the pretrained model; each round r then fits every silo from the global
model, aggregates the updates that arrived (at least `min_silos`), evaluates the new global
model on every silo's test split and logs the round to MLflow.
"""

import os
import tempfile
import time
from datetime import datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed
from pydantic import BaseModel

from fedsilo import federation
from fedsilo.federation import FederationError, JobPaths
from fedsilo.scenario import Scenario
from fedsilo.silo import model_card
from fedsilo.tracking import FederationTracker
from fedsilo.weights import WeightRef, copy_file, delete_state, local_path, same_layout
from pipelines.report import RoundRow, markdown, print_round
from pipelines.silos import silos_for
from pipelines.tasks import aggregate, initial_global


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


def _exchange_root(scenario: Scenario, tracker: FederationTracker) -> str:
    """Where this job's weights cross: the scenario's store, else local (embedded) or MLflow (distributed)."""
    chosen = scenario.federation.exchange or os.environ.get("FEDSILO_EXCHANGE")
    if chosen:
        return chosen
    if scenario.federation.mode == "distributed":
        return tracker.artifact_uri("exchange")
    return os.environ.get("FEDSILO_WORKDIR", ".fedsilo/jobs")


def _record_round(tracker, scenario, round_index, current, evaluations, reports, extra, meta, missing=()):
    """Log one round to MLflow (global model, metrics linked to it) and print its table."""
    union = federation.global_metrics(evaluations)
    parent = {f"global_{k}": v for k, v in union.items()} | extra
    per_silo = {e.silo: {"global_accuracy": e.accuracy, "global_f1_macro": e.f1_macro} for e in evaluations}
    for report in reports:
        per_silo.setdefault(report.silo, {}).update(
            local_accuracy=report.local.accuracy,
            local_f1_macro=report.local.f1_macro,
            train_loss=report.train_loss,
            num_examples=report.num_examples,
            fit_seconds=report.seconds,
        )
    if round_index > 0:
        for silo in scenario.silo_names():
            per_silo.setdefault(silo, {})["answered"] = float(silo not in missing)
    model_id = None
    if scenario.tracking.log_models:
        with tempfile.TemporaryDirectory() as scratch:
            model_id = tracker.log_global_model(round_index, local_path(current, scratch), meta)
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


def _champion_decision(scenario, tracker, silos, paths, candidate, final_evaluations):
    """Evaluate the current champion on this job's test data; decide whether the new model wins.

    Only a champion that cannot load into this model (other labels or architecture) is replaced
    without a comparison; one that cannot be read at all is kept, never replaced on doubt.
    """
    metric = scenario.evaluation.metric
    try:
        champion = tracker.champion_weights()
    except Exception as exc:  # registry or artifact store unreachable, files missing
        return False, f"{exc}; champion kept"
    if champion is None:
        final = federation.global_metrics(final_evaluations)
        return True, f"first registered model ({metric} {final[metric]:.4f})"
    version, path = champion
    if not same_layout(path, candidate):
        return True, f"champion v{version} has another architecture or label set; replaced"
    ref = copy_file(path, paths.champion_uri())
    evaluations, _ = silos.evaluate(scenario, ref, "champion")
    delete_state(ref)
    return federation.champion_verdict(final_evaluations, evaluations, metric, version)


def _starting_point(scenario, tracker, shape, paths) -> tuple[WeightRef, str]:
    """Round 0's global model: the registered champion when warm-starting and it fits, else the
    pretrained model; the second value says which, and why."""
    pretrained = initial_global(scenario, shape, paths.global_uri(0))
    if not scenario.retraining.warm_start:
        return pretrained, "pretrained model"
    try:
        champion = tracker.champion_weights()
    except Exception as exc:  # registry or artifact store unreachable
        return pretrained, f"pretrained model ({exc})"
    if champion is None:
        return pretrained, "pretrained model (no champion registered yet)"
    version, path = champion
    name = f"{scenario.registered_model_name} v{version}"
    if not same_layout(path, pretrained):
        return pretrained, f"pretrained model (champion {name} does not fit this model)"
    return copy_file(path, paths.global_uri(0)), f"champion {name}"


def _compare_silos(scenario, tracker, silos, reports, final_evaluations) -> None:
    """Every silo's final local model and the global model on every silo's test split, to MLflow."""
    models = {}
    for report in reports:
        models[f"{report.silo} (local)"], _ = silos.evaluate(scenario, report.update, f"local-{report.silo}")
        delete_state(report.update)
    models["global"] = final_evaluations
    metric = scenario.evaluation.metric
    tracker.log_silo_matrix(federation.silo_matrix(models, metric), metric)


def _publish_table(scenario: Scenario, job: str, rows: list[RoundRow], footer: str) -> None:
    """The round table as a Prefect markdown artifact, refreshed every round."""
    create_markdown_artifact(
        markdown(scenario.name, rows, scenario.silo_names(), footer),
        key=f"{scenario.name}-rounds",
        description=f"Accuracy by round of job {job}",
    )


@flow(
    name="federated-training",
    description="FedAvg fine-tuning of one shared model across silos, tracked in MLflow.",
    log_prints=True,
)
def federated_training(scenario: Scenario, job_name: str = "") -> JobResult:
    """Run one federated job of `scenario` and record it in MLflow.

    Args:
        scenario: the scenario: silos, data, model, federation, evaluation, tracking, retraining.
        job_name: the MLflow run name of this job; empty for '<scenario>-<timestamp>'.
    """
    logger = get_run_logger()
    job = job_name or f"{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    tracker = FederationTracker(scenario, job)
    tracker.start()
    paths = JobPaths.under(_exchange_root(scenario, tracker), job)
    silos = silos_for(scenario, paths, job)
    logger.info(
        "job %s: %d silos (%s), %d rounds; weights via %s; MLflow run %s",
        job,
        len(scenario.silos),
        scenario.federation.mode,
        scenario.federation.rounds,
        paths.root,
        tracker.parent_id,
    )
    rows: list[RoundRow] = []
    try:
        summaries, missing = silos.prepare(scenario)
        federation.check_quorum(scenario, [s.silo for s in summaries], "prepare")
        for summary in summaries:
            tracker.log_data(summary)
        scenario = federation.with_labels(scenario, summaries)
        shape = federation.input_shape(summaries)
        meta = model_card(scenario, shape)
        strategy = federation.strategy_for(scenario)
        current, origin = _starting_point(scenario, tracker, shape, paths)
        tracker.set_tags({"fedsilo.warm_start": origin})
        logger.info("round 0 starts from the %s", origin)

        evaluations, missing = silos.evaluate(scenario, current, "round-0")
        federation.check_quorum(scenario, [e.silo for e in evaluations], "round 0")
        initial, model_id, row = _record_round(
            tracker, scenario, 0, current, evaluations, [], {}, meta, missing
        )
        union, rows = initial, [row]
        for round_index in range(1, scenario.federation.rounds + 1):
            started = time.perf_counter()
            reports, missing = silos.fit(scenario, round_index, current)
            step = f"round {round_index}"
            federation.check_quorum(scenario, [r.silo for r in reports], step)
            previous = current
            current, rejected = aggregate(
                strategy, current, reports, round_index, paths.global_uri(round_index)
            )
            for silo, reason in rejected.items():
                logger.warning("round %d: update of %s left out: %s", round_index, silo, reason)
            reports = [r for r in reports if r.silo not in rejected]
            missing = sorted(set(missing) | set(rejected))
            federation.check_quorum(scenario, [r.silo for r in reports], step)
            exchanged = federation.update_bytes(reports)
            last = round_index == scenario.federation.rounds
            for ref in [previous] + ([] if last else [r.update for r in reports]):  # last: for the matrix
                delete_state(ref)
            evaluations, _ = silos.evaluate(scenario, current, f"round-{round_index}")
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
            _publish_table(
                scenario, job, rows, f"Job {job}: round {round_index} of {scenario.federation.rounds}."
            )
        _compare_silos(scenario, tracker, silos, reports, evaluations)

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
            promote, reason = _champion_decision(scenario, tracker, silos, paths, current, evaluations)
            result.registered_model = scenario.registered_model_name
            result.registered_version = tracker.register(model_id, promote, reason)
            result.champion, result.champion_reason = promote, reason
            logger.info(
                "registered %s version %s: %s", result.registered_model, result.registered_version, reason
            )
            delete_state(current)  # MLflow holds it now; the exchange keeps nothing
        decision = (
            f"\n\n**Champion**: {'moved to' if result.champion else 'stays; not moved to'} "
            f"{result.registered_model} v{result.registered_version}, because {result.champion_reason}."
            if result.registered_version
            else ""
        )
        footer = (
            f"Started from the {origin}. Initial accuracy {initial['accuracy']:.3f}, final "
            f"{union['accuracy']:.3f}. MLflow experiment `{scenario.experiment_name}`, run "
            f"`{tracker.parent_id}`.{decision}"
        )
        _publish_table(scenario, job, rows, footer)
        tracker.finish("FINISHED")
        return result
    except BaseException as exc:
        _publish_table(scenario, job, rows, f"Job {job} FAILED: {exc}")
        tracker.set_tags({"fedsilo.failure": str(exc)[:5000]})
        tracker.finish("FAILED")
        if isinstance(exc, FederationError):  # an expected outcome: fail with its message, no traceback
            logger.error("job %s failed: %s; completed rounds are in MLflow", job, exc)
            return Failed(message=str(exc))
        raise


__all__ = ["JobResult", "federated_training"]
