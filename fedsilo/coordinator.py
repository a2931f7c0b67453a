"""The coordinator: the one round loop of a federated job, whoever runs the silos.

It is given three small things and owns everything else (the shape of Flower's
`Strategy.start(grid)`):

- `Silos` answers prepare / fit / mask (secure aggregation) / evaluate / evaluate_models (the silo
  x silo matrix, one step per silo) / personalize with the silos' replies and the names of those
  that did not answer: in this process (`fedsilo.local.LocalSilos`), as Prefect tasks, or as
  flow runs on the silos' own workers (`pipelines/silos.py`);
- `Tracker` records the job (MLflow in `fedsilo.tracking`, nothing in `fedsilo.local.NullTracker`) and holds
  the registry the champion decision reads;
- reporters are told what happened (a round's table, an event, the end) and decide nothing.

Round 0 evaluates the starting model (pretrained, or the champion when warm-starting); each round
then sends the global model and the strategy's settings to every silo, aggregates the updates that
came back (at least `min_silos`), evaluates the new global model on every silo's test split and
records the round. After the last round: personalization, the silo x silo matrix, the champion
decision and registration; weights the job wrote are deleted whatever happens.
"""

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from safetensors.torch import load_file

from fedsilo import federation
from fedsilo.federation import FederationError, JobPaths
from fedsilo.messages import DataSummary, Evaluation, FitReport, MaskedUpdate, Scores, WeightRef
from fedsilo.modeling import full_state
from fedsilo.privacy.accounting import epsilon as dp_epsilon
from fedsilo.records import ADAPTER, JobResult, ResumePoint, RoundRecord
from fedsilo.scenario import Scenario
from fedsilo.silo import initial_state, model_card
from fedsilo.strategies import Strategy, make_strategy
from fedsilo.weights import (
    copy_file,
    delete_state,
    delete_uri,
    local_path,
    same_layout,
    to_bytes,
    write_state,
)

Answers = tuple[list, list[str]]  # the replies that came, the names of the silos that did not answer


class Silos(Protocol):
    """How the coordinator reaches its silos; every call answers (replies, missing silo names)."""

    def prepare(self, scenario: Scenario) -> tuple[list[DataSummary], list[str]]: ...

    def fit(
        self, scenario: Scenario, round_index: int, weights: WeightRef, config: dict[str, float]
    ) -> tuple[list[FitReport], list[str]]: ...

    def evaluate(
        self, scenario: Scenario, weights: WeightRef, step: str
    ) -> tuple[list[Evaluation], list[str]]: ...

    def evaluate_models(
        self, scenario: Scenario, models: dict[str, WeightRef], step: str
    ) -> tuple[list[Scores], list[str]]:
        """Each silo scores every named model on its test split, in one step per silo."""
        ...

    def personalize(
        self, scenario: Scenario, weights: WeightRef, steps: int
    ) -> tuple[list[Evaluation], list[str]]: ...

    def mask(
        self, scenario: Scenario, round_index: int, attempt: int, peers: dict[str, str]
    ) -> tuple[list[MaskedUpdate], list[str]]:
        """Secure aggregation: each silo in `peers` (silo -> public key) masks the update it kept."""
        ...


class Tracker(Protocol):
    """Where the job is recorded, and the model registry its champion lives in."""

    parent_id: str

    def log_data(self, summary: DataSummary) -> None: ...

    def log_global_model(
        self, round_index: int, weights_path: str, meta: dict, extra_files: dict[str, str]
    ) -> str | None: ...

    def log_round(
        self,
        round_index: int,
        job: dict[str, float],
        silos: dict[str, dict[str, float]],
        model_id: str | None,
    ) -> None: ...

    def log_silo_matrix(self, matrix, metric: str) -> None: ...

    def set_tags(self, tags: dict[str, str], silo: str | None = None) -> None: ...

    def champion_weights(self, adapter: bool = False) -> tuple[str, str] | None: ...

    def register(self, model_id: str, make_champion: bool, reason: str) -> str | None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class Reporter(Protocol):
    """Told what happened; decides nothing (console table, Prefect artifacts and events)."""

    def round_done(self, record: RoundRecord, history: list[RoundRecord]) -> None: ...

    def event(self, name: str, detail: dict[str, str]) -> None: ...

    def finished(self, summary: str, history: list[RoundRecord], failed: bool) -> None: ...


Aggregated = tuple[WeightRef | None, dict[str, str]]  # the new global model; rejected silos' reasons
Aggregate = Callable[[Strategy, WeightRef, list[FitReport], int, str, federation.UpdateRules], Aggregated]


def aggregate_round(
    strategy: Strategy,
    current: WeightRef,
    reports: list[FitReport] | list[MaskedUpdate],
    round_index: int,
    out_uri: str,
    rules: federation.UpdateRules,
) -> Aggregated:
    """The default aggregation step (the Prefect flow wraps the same call in a task): plain
    updates, or one attempt's masked vectors under secure aggregation."""
    if reports and isinstance(reports[0], MaskedUpdate):
        return federation.secure_aggregate(strategy, current, reports, out_uri, rules)
    return federation.aggregate(strategy, current, reports, out_uri, rules)


def open_job(tracker, resume_job: str, retrying: bool) -> ResumePoint | None:
    """Start the job's runs, or take up an interrupted job's: `resume_job` must exist (LookupError
    otherwise); a retry of a flow run resumes its own job when it completed a round, else starts it."""
    if resume_job or retrying:
        try:
            return tracker.attach()
        except LookupError:
            if resume_job:
                raise
    tracker.start()
    return None


class Coordinator:
    """Runs one federated job of `scenario` through `silos`, recording it with `tracker`."""

    def __init__(
        self,
        scenario: Scenario,
        job: str,
        silos: Silos,
        tracker: Tracker,
        paths: JobPaths,
        reporters: Sequence[Reporter] = (),
        aggregate: Aggregate = aggregate_round,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        strategy: Strategy | None = None,
        resume: ResumePoint | None = None,
    ):
        self.scenario, self.job, self.silos, self.tracker, self.paths = scenario, job, silos, tracker, paths
        self.reporters, self.aggregate = list(reporters), aggregate
        self.log = logger or logging.getLogger("fedsilo")
        self.strategy = strategy or make_strategy(scenario.federation)
        self.resume = resume
        self.history: list[RoundRecord] = list(resume.history) if resume else []
        self._held: dict[str, WeightRef] = {}  # weights this job wrote and has not deleted yet
        self._late: set[str] = set()  # where silos left out of a round may still have written
        self.spent_by_round: dict[int, dict[str, float]] = {}  # DP-SGD epsilon per silo, by round

    # -- the job ---------------------------------------------------------------------------------

    def run(self) -> JobResult:
        """The whole job; on any failure the reason is recorded, the job's weights are deleted and
        the exception propagates (FederationError: an expected outcome, e.g. too few silos)."""
        try:
            result = self._run()
        except BaseException as exc:
            self._notify("finished", f"Job {self.job} FAILED: {exc}", self.history, True)
            self.tracker.set_tags({"fedsilo.failure": str(exc)[:5000]})
            self.tracker.finish("FAILED")
            if isinstance(exc, FederationError):
                self.log.error("job %s failed: %s; completed rounds are recorded", self.job, exc)
            raise
        finally:
            self._delete_all()
        self.tracker.finish("FINISHED")
        return result

    def _run(self) -> JobResult:
        rounds = self.scenario.federation.rounds
        self.log.info(
            "job %s: %d silos (%s), %d rounds of %s; weights via %s",
            self.job,
            len(self.scenario.silos),
            self.scenario.federation.mode,
            rounds,
            self.scenario.federation.strategy,
            self.paths.root,
        )
        meta = self._prepare()
        if self.resume:
            current, origin, model_id = self._resumed()
            evaluations = None
        else:
            current, origin = self._starting_point(meta)
            self.tracker.set_tags({"fedsilo.warm_start": origin})
            self.log.info("round 0 starts from the %s", origin)
            evaluations, missing = self._evaluate(current, "round-0")
            self._check_quorum([e.silo for e in evaluations], "round 0")
            model_id = self._record(0, current, evaluations, [], {}, meta, missing)
        reports: list[FitReport] = []
        for round_index in range(len(self.history), rounds + 1):
            current, reports, evaluations, model_id = self._round(round_index, current, meta)
        if evaluations is None:  # resumed after the last round: score the final model again
            evaluations, _ = self._evaluate(current, f"round-{rounds}")
        personalized = self._personalize(current)
        self._compare_silos(reports, evaluations, personalized)
        result = JobResult(
            job=self.job,
            experiment=self.scenario.experiment_name,
            parent_run_id=self.tracker.parent_id,
            tracking_uri=getattr(self.tracker, "tracking_uri", ""),
            rounds=rounds,
            initial_accuracy=self.history[0].global_accuracy,
            final_accuracy=self.history[-1].global_accuracy,
            curve=[r.global_accuracy for r in self.history],
            personalized={e.silo: e.accuracy for e in personalized},
            privacy=self._privacy_statement(),
        )
        if result.privacy:
            self.tracker.set_tags({"fedsilo.privacy": result.privacy})
        if model_id:
            self._register(result, model_id, current, evaluations)
        self._notify("finished", self._summary(result, origin), self.history, False)
        return result

    def _resumed(self) -> tuple[WeightRef, str, str | None]:
        """The global model and strategy state of the last completed round of an interrupted job."""
        point = self.resume
        current = self._hold(copy_file(point.weights_path, self.paths.global_uri(point.round_index)))
        if point.strategy_state_path:
            self.strategy.load_state_dict(load_file(point.strategy_state_path))
        origin = f"round {point.round_index} of the interrupted job {self.job}"
        self.tracker.set_tags({"fedsilo.resumed": origin})
        self.log.info("job %s resumes after round %d", self.job, point.round_index)
        return current, origin, point.model_id

    def _prepare(self) -> dict:
        """Silos describe their data; labels and input shape are settled; returns the model card."""
        summaries, _ = self._answers(self.silos.prepare(self.scenario), "prepare")
        self._check_quorum([s.silo for s in summaries], "prepare")
        for summary in summaries:
            self.tracker.log_data(summary)
        self.scenario = federation.with_labels(self.scenario, summaries)
        self.rules = federation.UpdateRules.of(self.scenario, summaries)
        self.input_shape = federation.input_shape(summaries)
        return model_card(self.scenario, self.input_shape)

    def _round(self, round_index: int, current: WeightRef, meta: dict):
        """One round: fit, aggregate, evaluate, record. Returns the new global model and the round's
        fit reports, evaluations and logged model id."""
        started = time.perf_counter()
        step = f"round {round_index}"
        config = self.strategy.configure_fit(round_index)
        if self.rules.clipping_range is not None:
            config = config | {"secagg_weight_bound": float(self.rules.encoding().weight_bound)}
        reports, missing = self._answers(self.silos.fit(self.scenario, round_index, current, config), step)
        for report in reports:
            if report.update is not None:
                self._hold(report.update)
        for silo in missing:  # it may have written its update before it was given up on
            self._late.add(self.paths.update_uri(round_index, silo))
        secure = self.rules.clipping_range is not None
        declined = {r.silo: p for r in reports if (p := federation.fit_reply_problem(r, secure))}
        for report in reports:
            if report.silo in declined and report.update is not None:
                self._release(report.update)
        spent = {  # DP-SGD budgets, also of silos that declined because theirs ran out
            r.silo: r.epsilon
            for r in reports
            if r.epsilon is not None and federation.plausible_epsilon(r.epsilon)
        }
        self.spent_by_round[round_index] = spent
        reports = [r for r in reports if r.silo not in declined]
        self._check_quorum([r.silo for r in reports], step, declined)
        out_uri = self.paths.global_uri(round_index)
        if secure:
            new, rejected, sent = self._secure_aggregate(round_index, current, reports, out_uri)
        else:
            new, rejected = self.aggregate(self.strategy, current, reports, round_index, out_uri, self.rules)
            sent = [r.update for r in reports if r.silo not in rejected]
        if new is not None:
            self._hold(new)
        for silo, reason in rejected.items():
            self.log.warning("round %d: update of %s left out: %s", round_index, silo, reason)
            report = next(r for r in reports if r.silo == silo)
            if report.update is not None:
                self._release(report.update)
        rejected = declined | rejected
        for silo, reason in rejected.items():
            self.tracker.set_tags({f"fedsilo.rejected.round_{round_index}": reason[:5000]}, silo=silo)
        if rejected:
            reasons = "; ".join(f"{silo}: {reason}" for silo, reason in sorted(rejected.items()))
            self.tracker.set_tags({f"fedsilo.rejected.round_{round_index}": reasons[:5000]})
        reports = [r for r in reports if r.silo not in rejected]
        missing = sorted(set(missing) | set(rejected))
        self._check_quorum([r.silo for r in reports], step, rejected)
        last = round_index == self.scenario.federation.rounds
        if last:
            reports = self._full_local_models(round_index, reports, current)
        self._release(current)
        if not last:  # the last round's local models go on to the silo x silo matrix
            for report in reports:
                if report.update is not None:
                    self._release(report.update)
        evaluations, unevaluated = self._evaluate(new, f"round-{round_index}")
        if unevaluated:  # the union metrics cover fewer silos this round: say which
            self.tracker.set_tags({f"fedsilo.unevaluated.round_{round_index}": ",".join(unevaluated)})
        if missing:
            self.tracker.set_tags({f"fedsilo.missing.round_{round_index}": ",".join(missing)})
            for silo in missing:
                reason = rejected.get(silo, "did not answer")
                self._notify(
                    "event",
                    "fedsilo.silo.left-out",
                    {"silo": silo, "round": str(round_index), "reason": reason},
                )
        extra = {
            "round_seconds": time.perf_counter() - started,
            "bytes_exchanged": federation.update_bytes(current, len(reports), sent),
            "silos_answered": len(reports),
        } | self._privacy_spent(round_index, spent)
        model_id = self._record(round_index, new, evaluations, reports, extra, meta, missing, spent)
        return new, reports, evaluations, model_id

    def _full_local_models(self, round_index: int, reports: list[FitReport], base: WeightRef):
        """The reports with each 16-bit change rebuilt into full weights, for the silo x silo matrix."""
        dtype = self.scenario.federation.transfer_dtype
        if dtype == "float32":
            return reports
        rebuilt = []
        for report in reports:
            if report.update is None:
                rebuilt.append(report)
                continue
            uri = self.paths.local_uri(round_index, report.silo)
            full = self._hold(federation.materialize(report.update, base, dtype, uri))
            self._release(report.update)
            rebuilt.append(replace(report, update=full))
        return rebuilt

    def _secure_aggregate(
        self, round_index: int, current: WeightRef, reports: list[FitReport], out_uri: str
    ) -> tuple[WeightRef | None, dict[str, str], list[WeightRef]]:
        """Secure aggregation's masking step, repeated without any silo that drops out of it, then
        the unmasked sum. Returns the new model, the silos left out with why, and every vector
        received (for the bytes count).

        Masks cancel only in the sum over every silo that got the key list, so when one of them
        does not answer, the vectors of that attempt are deleted unread and the silos left mask
        again with fresh masks (the key derivation includes the attempt number).
        """
        peers = {r.silo: r.public_key for r in reports}
        attempt, received, refused = 0, [], {}
        while True:
            step = f"round {round_index} masking, attempt {attempt}"
            self._check_quorum(list(peers), step)
            masked, _ = self._answers(self.silos.mask(self.scenario, round_index, attempt, peers), step)
            masked = [m for m in masked if m.silo in peers and (m.round, m.attempt) == (round_index, attempt)]
            for item in masked:
                self._hold(item.vector)
            received += [m.vector for m in masked]
            malformed = federation.masked_problems(masked, current)
            refused |= malformed
            for item in masked:
                if item.silo in malformed:
                    self._release(item.vector)
            masked = [m for m in masked if m.silo not in malformed]
            dropped = sorted(set(peers) - {m.silo for m in masked})
            for silo in dropped:  # it may still write its vector late: delete it at the end, unread
                self._late.add(self.paths.masked_uri(round_index, attempt, silo))
            if not dropped:
                break
            self.log.warning(
                "%s: no masked update from %s; the others mask again without it", step, ", ".join(dropped)
            )
            for item in masked:
                self._release(item.vector)
            peers = {silo: key for silo, key in peers.items() if silo not in dropped}
            attempt += 1
        new, rejected = self.aggregate(self.strategy, current, masked, round_index, out_uri, self.rules)
        for item in masked:
            self._release(item.vector)
        left_out = {
            r.silo: refused.get(r.silo, "dropped out of the masking step")
            for r in reports
            if r.silo not in peers
        }
        return new, left_out | rejected, received

    def _privacy_statement(self) -> str:
        """What the privacy options guaranteed over the rounds this job ran, in one line."""
        privacy, parts = self.scenario.privacy, []
        if privacy.secure_aggregation:
            parts.append("secure aggregation (the coordinator saw only sums of masked updates)")
        if privacy.dp:
            worst = max((e for r in self.spent_by_round.values() for e in r.values()), default=0.0)
            parts.append(
                f"record-level DP-SGD at each silo, epsilon <= {worst:.3g} (delta {privacy.dp.delta:g})"
            )
        if privacy.central_dp:
            rounds = self.scenario.federation.rounds
            central = self._privacy_spent(rounds, {})["central_epsilon"]
            delta = privacy.central_dp.delta
            parts.append(
                f"client-level central DP over {rounds} rounds, epsilon {central:.3g} (delta {delta:g})"
            )
        return "; ".join(parts)

    def _privacy_spent(self, round_index: int, spent: dict[str, float | None]) -> dict[str, float]:
        """The job's privacy figures for a round: the worst silo's DP-SGD epsilon and the global
        model's client-level epsilon under central DP."""
        figures = {}
        if spent:
            figures["max_silo_epsilon"] = max(spent.values())
        spec = self.scenario.privacy.central_dp
        if spec is not None:
            figures["central_epsilon"] = dp_epsilon(spec.noise_multiplier, 1.0, round_index, spec.delta)
        return figures

    # -- recording -------------------------------------------------------------------------------

    def _record(
        self, round_index, current, evaluations, reports, extra, meta, missing, spent=None
    ) -> str | None:
        """Log one round (global model with the strategy's state, metrics linked to it); report it."""
        union = federation.global_metrics(evaluations)
        job = {f"global_{k}": v for k, v in union.items()} | extra | {"silos_evaluated": len(evaluations)}
        per_silo = {
            e.silo: {"global_accuracy": e.accuracy, "global_f1_macro": e.f1_macro} for e in evaluations
        }
        for report in reports:
            per_silo.setdefault(report.silo, {}).update(
                local_accuracy=report.local.accuracy,
                local_f1_macro=report.local.f1_macro,
                train_loss=report.train_loss,
                num_examples=report.num_examples,
                fit_seconds=report.seconds,
                fit_steps=report.steps,
            )
            if report.public_key:  # secure aggregation: coordinates the silo clipped to the range
                per_silo[report.silo]["clipped_coordinates"] = report.clipped
        for silo, value in (spent or {}).items():
            per_silo.setdefault(silo, {})["epsilon"] = value
        if round_index > 0:
            for silo in self.scenario.silo_names():
                per_silo.setdefault(silo, {})["answered"] = float(silo not in missing)
        model_id = None
        if self.scenario.tracking.log_models:
            with tempfile.TemporaryDirectory() as scratch:
                extra_files = self._strategy_state_file(scratch)
                weights = local_path(current, scratch)
                if self.scenario.model.lora is not None:  # register the merged model, keep the adapters
                    extra_files[ADAPTER] = weights
                    weights = self._merged_file(weights, scratch, round_index)
                model_id = self.tracker.log_global_model(round_index, weights, meta, extra_files)
        self.tracker.log_round(round_index, job, per_silo, model_id)
        record = RoundRecord(
            round_index,
            self.scenario.federation.rounds,
            union["accuracy"],
            silo_local={r.silo: r.local.accuracy for r in reports},
            silo_global={e.silo: e.accuracy for e in evaluations},
            seconds=extra.get("round_seconds", 0.0),
            missing=list(missing),
        )
        self.history.append(record)
        self._notify("round_done", record, self.history)
        return model_id

    def _merged_file(self, adapter_path: str, scratch: str, round_index: int) -> str:
        """Under LoRA, the plain model with the adapters at `adapter_path` merged in, as a file."""
        shared = load_file(adapter_path)
        labels = len(self.scenario.data.labels)
        full = full_state(
            self.scenario.model, labels, self.input_shape, self.scenario.federation.seed, shared
        )
        path = Path(scratch, f"merged-{round_index:03d}.safetensors")
        path.write_bytes(to_bytes(full))
        return str(path)

    def _strategy_state_file(self, scratch: str) -> dict[str, str]:
        """The strategy's state (momentum, moments) as a file logged with the round's model."""
        state = self.strategy.state_dict()
        if not state:
            return {}
        path = Path(scratch, "strategy_state.safetensors")
        path.write_bytes(to_bytes(state))
        return {path.name: str(path)}

    def _summary(self, result: JobResult, origin: str) -> str:
        decision = ""
        if result.registered_version:
            moved = "moved to" if result.champion else "stays; not moved to"
            decision = (
                f"\n\n**Champion**: {moved} {result.registered_model} v{result.registered_version}, "
                f"because {result.champion_reason}."
            )
        personalized = ""
        if result.personalized:
            values = ", ".join(f"{s} {a:.3f}" for s, a in result.personalized.items())
            personalized = f" Personalized ({self.scenario.evaluation.personalize_steps} steps): {values}."
        return (
            f"Started from the {origin}. Initial accuracy {result.initial_accuracy:.3f}, final "
            f"{result.final_accuracy:.3f}.{personalized} Experiment `{result.experiment}`, run "
            f"`{result.parent_run_id}`.{decision}"
        )

    # -- after the last round --------------------------------------------------------------------

    def _personalize(self, current: WeightRef) -> list[Evaluation]:
        """Each silo fine-tunes the final global model on its own data; scored on its own split."""
        steps = self.scenario.evaluation.personalize_steps
        if not steps:
            return []
        evaluations, missing = self._scored(
            self.silos.personalize(self.scenario, current, steps), "personalize"
        )
        if missing:
            self.log.warning("personalization: no answer from %s", ", ".join(missing))
        rounds = self.scenario.federation.rounds
        per_silo = {
            e.silo: {"personalized_accuracy": e.accuracy, "personalized_f1_macro": e.f1_macro}
            for e in evaluations
        }
        union = federation.global_metrics(evaluations) if evaluations else {}
        job = {f"personalized_{k}": union[k] for k in ("accuracy", "f1_macro") if k in union}
        self.tracker.log_round(rounds, job, per_silo, None)
        return evaluations

    def _compare_silos(
        self, reports: list[FitReport], final: list[Evaluation], personalized: list[Evaluation]
    ) -> None:
        """Every silo's final local model and the global model on every silo's test split; each
        personalized model on its own split."""
        local = {f"{r.silo} (local)": r.update for r in reports if r.update is not None}
        models = self._scored_models(local, "silo-matrix") if local else {}
        for report in reports:  # under secure aggregation no local model ever left its silo
            if report.update is not None:
                self._release(report.update)
        models["global"] = final
        if personalized:
            models["personalized"] = personalized
        metric = self.scenario.evaluation.metric
        self.tracker.log_silo_matrix(
            federation.silo_matrix(models, metric, self.scenario.silo_names()), metric
        )

    def _register(self, result: JobResult, model_id: str, candidate: WeightRef, final) -> None:
        promote, reason = self._champion_decision(candidate, final)
        result.registered_model = self.scenario.registered_model_name
        result.registered_version = self.tracker.register(model_id, promote, reason)
        result.champion, result.champion_reason = promote, reason
        self.log.info(
            "registered %s version %s: %s", result.registered_model, result.registered_version, reason
        )
        event = "fedsilo.champion.moved" if promote else "fedsilo.champion.kept"
        detail = {
            "model": result.registered_model,
            "version": str(result.registered_version),
            "reason": reason,
        }
        self._notify("event", event, detail)

    def _champion_decision(self, candidate: WeightRef, final: list[Evaluation]) -> tuple[bool, str]:
        """Evaluate the current champion on this job's test data; decide whether the new model wins.

        Only a champion that cannot load into this model (other labels or architecture) is replaced
        without a comparison; one that cannot be read at all is kept, never replaced on doubt.
        """
        metric = self.scenario.evaluation.metric
        try:
            champion = self.tracker.champion_weights()
        except Exception as exc:  # registry or artifact store unreachable, files missing
            return False, f"{exc}; champion kept"
        if champion is None:
            return True, f"first registered model ({metric} {federation.global_metrics(final)[metric]:.4f})"
        version, path = champion
        with tempfile.TemporaryDirectory() as scratch:
            if self.scenario.model.lora is not None:  # the champion is a merged, plain model
                merged = self._merged_file(
                    local_path(candidate, scratch), scratch, self.scenario.federation.rounds
                )
                candidate = WeightRef(Path(merged).as_uri(), "", Path(merged).stat().st_size)
            comparable = same_layout(path, candidate)
        if not comparable:
            if self.scenario.retraining.replace_incompatible_champion:
                return True, f"champion v{version} has another architecture or label set; replaced"
            return False, (
                f"champion v{version} has another architecture or label set, so the two cannot be "
                "compared; champion kept (set retraining.replace_incompatible_champion: true to replace it)"
            )
        ref = self._hold(copy_file(path, self.paths.champion_uri()))
        evaluations, _ = self._evaluate(ref, "champion")
        self._release(ref)
        return federation.champion_verdict(final, evaluations, metric, version)

    def _starting_point(self, meta: dict) -> tuple[WeightRef, str]:
        """Round 0's global model: the registered champion when warm-starting and it fits, else the
        pretrained model; the second value says which, and why."""
        uri = self.paths.global_uri(0)
        pretrained = self._hold(write_state(initial_state(self.scenario, self.input_shape), uri))
        if not self.scenario.retraining.warm_start:
            return pretrained, "pretrained model"
        try:  # a LoRA job starts from the champion's adapters, on the same pretrained encoder
            champion = self.tracker.champion_weights(adapter=self.scenario.model.lora is not None)
        except Exception as exc:  # registry or artifact store unreachable
            return pretrained, f"pretrained model ({exc})"
        if champion is None:
            return pretrained, "pretrained model (no champion registered yet)"
        version, path = champion
        name = f"{self.scenario.registered_model_name} v{version}"
        if not same_layout(path, pretrained):
            return pretrained, f"pretrained model (champion {name} does not fit this model)"
        return self._hold(copy_file(path, uri)), f"champion {name}"

    # -- helpers ---------------------------------------------------------------------------------

    def _answers(self, answers: tuple[list, list[str]], step: str) -> tuple[list, list[str]]:
        """Silos' replies with at most one per known silo; a silo whose replies were all dropped
        counts as missing. Replies are untrusted input like updates."""
        replies, missing = answers
        kept, dropped = federation.own_replies(self.scenario, replies, step)
        for problem in dropped:
            self.log.warning("dropped %s", problem)
        answered = {r.silo for r in kept}
        return kept, sorted(set(missing) | (set(self.scenario.silo_names()) - answered))

    def _evaluate(self, weights: WeightRef, step: str) -> tuple[list[Evaluation], list[str]]:
        return self._scored(self.silos.evaluate(self.scenario, weights, step), step)

    def _scored(self, answers: tuple[list, list[str]], step: str) -> tuple[list[Evaluation], list[str]]:
        """Evaluations whose confusion matrix fits the labels; the others are named and left out."""
        evaluations, missing = self._answers(answers, step)
        sound = []
        for evaluation in evaluations:
            problem = federation.evaluation_problem(evaluation, len(self.scenario.data.labels or []))
            if problem:
                self.log.warning("%s: evaluation of %s left out: %s", step, evaluation.silo, problem)
                missing.append(evaluation.silo)
            else:
                sound.append(evaluation)
        return sound, sorted(missing)

    def _scored_models(self, models: dict[str, WeightRef], step: str) -> dict[str, list[Evaluation]]:
        """Every model scored by every silo in one step per silo: model name -> evaluations. A
        silo's score that does not fit the labels is left out of that model's row."""
        replies, missing = self._answers(self.silos.evaluate_models(self.scenario, models, step), step)
        if missing:
            self.log.warning("%s: no scores from %s", step, ", ".join(missing))
        rows: dict[str, list[Evaluation]] = {name: [] for name in models}
        labels = len(self.scenario.data.labels or [])
        for reply in replies:
            for name, evaluation in reply.models.items():
                evaluation = replace(evaluation, silo=reply.silo)  # a reply speaks only for its silo
                problem = federation.evaluation_problem(evaluation, labels)
                if name not in rows or problem:
                    self.log.warning(
                        "%s: score of %r by %s left out: %s",
                        step,
                        name,
                        reply.silo,
                        problem or "unknown model",
                    )
                    continue
                rows[name].append(evaluation)
        return rows

    def _check_quorum(self, answered: list[str], step: str, reasons: dict[str, str] | None = None) -> None:
        federation.check_quorum(self.scenario, answered, step, reasons)

    def _notify(self, method: str, *args) -> None:
        for reporter in self.reporters:
            try:
                getattr(reporter, method)(*args)
            except Exception as exc:  # a reporter decides nothing, and cannot fail the job either
                self.log.warning("reporter %s failed on %s: %s", type(reporter).__name__, method, exc)

    def _hold(self, ref: WeightRef) -> WeightRef:
        self._held[ref.uri] = ref
        return ref

    def _release(self, ref: WeightRef) -> None:
        """Delete weights the job no longer needs (MLflow holds every logged global model)."""
        if self._held.pop(ref.uri, None) is not None:
            delete_state(ref)

    def _delete_all(self) -> None:
        for ref in list(self._held.values()):
            try:
                self._release(ref)
            except Exception as exc:  # the store may be what failed the job
                self.log.warning("could not delete %s: %s", ref.uri, exc)
                self._held.pop(ref.uri, None)
        for uri in self._late - set(self._held):
            try:
                delete_uri(uri)
            except Exception as exc:  # most were never written
                self.log.debug("nothing deleted at %s: %s", uri, exc)
