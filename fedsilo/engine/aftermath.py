"""After the last round: the personalized scores, the silo x silo matrix, registration and the
champion decision; and the last round's local models rebuilt for the matrix."""

from dataclasses import replace

from fedsilo.engine import champion
from fedsilo.engine.recording import silo_matrix
from fedsilo.engine.screening import evaluation_problem
from fedsilo.messages import Evaluation, FitReport, Kept, WeightRef
from fedsilo.records import JobResult
from fedsilo.steps import Score
from fedsilo.transfer import materialize
from fedsilo.weights import copy_file


def personalized(job, kept: list[Kept]) -> list[Evaluation]:
    """Each silo's personalized model (the kept round's global model fine-tuned on its own rows in
    its keep step) on its own test split: logged per silo and over the union."""
    evaluations = [report.personalized for report in kept if report.personalized is not None]
    if not evaluations:
        return []
    per_silo = {
        e.silo: {"personalized_accuracy": e.accuracy, "personalized_f1_macro": e.f1_macro}
        for e in evaluations
    }
    union = job.recorder.union(evaluations)
    figures = {f"personalized_{k}": union[k] for k in ("accuracy", "f1_macro") if k in union}
    job.tracker.log_round(job.scenario.federation.rounds, figures, per_silo, None)
    return evaluations


def compare_silos(
    job,
    fits: list[FitReport],
    final: list[Evaluation],
    personalized: list[Evaluation],
    alone: list[Evaluation] = (),
) -> None:
    """Every silo's final local model and the global model on every silo's test split; each
    personalized model and each alone model on its own split."""
    local = {f"{r.silo} (local)": r.update for r in fits if r.update is not None}
    models = scored_models(job, local, "silo-matrix") if local else {}
    for fit in fits:  # under secure aggregation no local model ever left its silo
        job.ledger.release(fit.update)
    models["global"] = final
    if personalized:
        models["personalized"] = personalized
    if alone:
        models["alone"] = list(alone)
    metric = job.scenario.evaluation.metric
    job.tracker.log_silo_matrix(silo_matrix(models, metric, job.scenario.silo_names()), metric)


def scored_models(job, models: dict[str, WeightRef], name: str) -> dict[str, list[Evaluation]]:
    """Every model scored by every silo in one step per silo: model name -> evaluations. A silo's
    score that does not fit the labels, or of a model it was not asked about, is left out."""
    outcome = job.ask(Score(models, name, job.paths.root), name)
    if outcome.left_out():
        job.log.warning("%s: no scores from %s", name, outcome.left_out())
    rows: dict[str, list[Evaluation]] = {model: [] for model in models}
    labels = len(job.scenario.data.labels or [])
    for silo, reply in outcome.replies.items():
        for model, evaluation in reply.models.items():
            evaluation = replace(evaluation, silo=silo)  # a reply speaks only for its silo
            problem = evaluation_problem(evaluation, labels, job.test_counts.get(silo))
            if model not in rows or problem:
                job.log.warning(
                    "%s: score of %r by %s left out: %s", name, model, silo, problem or "unknown model"
                )
                continue
            rows[model].append(evaluation)
    return rows


def full_local_models(job, round_index: int, fits: list[FitReport], base: WeightRef) -> list[FitReport]:
    """On the last round, each 16-bit change rebuilt into full weights for the silo x silo matrix."""
    dtype = job.scenario.federation.transfer_dtype
    if round_index < job.scenario.federation.rounds or dtype == "float32":
        return fits
    rebuilt = []
    for fit in fits:
        if fit.update is None:
            rebuilt.append(fit)
            continue
        uri = job.paths.local_uri(round_index, fit.silo)
        full = job.ledger.hold(materialize(fit.update, base, dtype, uri))
        job.ledger.release(fit.update)
        rebuilt.append(replace(fit, update=full))
    return rebuilt


def register(job, result: JobResult, model_id: str, candidate: WeightRef, final: list[Evaluation]) -> None:
    """Register the final model; the champion alias moves only when it wins (fedsilo.engine.champion)."""

    def score_champion(path: str) -> list[Evaluation]:
        ref = job.ledger.hold(copy_file(path, job.paths.champion_uri()))
        scored = job.evaluate(ref, "champion")
        job.ledger.release(ref)
        return list(scored.replies.values())

    def merged(adapter_path: str, scratch: str) -> str:
        return job.recorder.merged_file(adapter_path, scratch, job.scenario.federation.rounds)

    promote, reason = champion.decide(job.scenario, job.tracker, candidate, final, score_champion, merged)
    result.registered_model = job.scenario.registered_model_name
    result.registered_version = job.tracker.register(model_id, promote, reason)
    result.champion, result.champion_reason = promote, reason
    job.log.info("registered %s version %s: %s", result.registered_model, result.registered_version, reason)
    event = "fedsilo.champion.moved" if promote else "fedsilo.champion.kept"
    detail = {"model": result.registered_model, "version": str(result.registered_version), "reason": reason}
    job.notify("event", event, detail)


def job_result(job, kept_round: int, personalized: list[Evaluation], kept=()) -> JobResult:
    """What the job returns: its curve, the round it kept, personalization, what each silo keeps
    and would have had alone, and the privacy statement."""
    rounds = job.scenario.federation.rounds
    final = next((r for r in job.history if r.round_index == kept_round), job.history[-1])
    return JobResult(
        job=job.job,
        experiment=job.scenario.experiment_name,
        parent_run_id=job.tracker.parent_id,
        tracking_uri=getattr(job.tracker, "tracking_uri", ""),
        rounds=rounds,
        initial_accuracy=job.history[0].global_accuracy,
        final_accuracy=final.global_accuracy,
        kept_round=final.round_index,
        curve=[r.global_accuracy for r in job.history],
        personalized={e.silo: e.accuracy for e in personalized},
        kept={k.silo: k.kept for k in kept},
        kept_accuracy={k.silo: k.kept_evaluation.accuracy for k in kept},
        alone_accuracy={k.silo: k.alone.accuracy for k in kept if k.alone is not None},
        privacy=job.aggregation.statement(rounds),
    )
