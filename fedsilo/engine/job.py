"""The round loop of a federated job, top to bottom; whoever runs the silos.

The coordinator is given a transport (how to ask silos a step), a tracker (MLflow) and reporters,
and owns the rest: round 0 scores the starting model (pretrained, the champion when warm-starting,
or an interrupted job's last round); each round asks every silo to fit, screens the replies,
aggregates (the strategy inside its privacy wrappers, fedsilo.engine.aggregation), scores the new
global model on every silo's test split and records the round. After the last round: personal
fine-tuning, the silo x silo matrix and the champion decision. Weights the job wrote are deleted
whatever happens (fedsilo.engine.ledger).
"""

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from fedsilo.engine import aftermath, influence, keeping, screening
from fedsilo.engine.aggregation import Aggregation, RoundContext, UpdateRules
from fedsilo.engine.best_round import BestRound, Candidate, kept_round, offer_resumed
from fedsilo.engine.ledger import WeightLedger
from fedsilo.engine.protocols import Reporter, Tracker
from fedsilo.engine.recording import RoundRecorder, silo_metrics, summary, tag_left_out, update_bytes
from fedsilo.engine.screening import Outcome, check_quorum, screen
from fedsilo.engine.start import resumed, settle_data, starting_point
from fedsilo.engine.wrapping import bind_strategy, make_aggregation, strategy_tensors
from fedsilo.errors import FederationError
from fedsilo.messages import Evaluation, FitReport, WeightRef
from fedsilo.paths import JobPaths
from fedsilo.records import JobResult, ResumePoint, RoundRecord
from fedsilo.scenario import Scenario
from fedsilo.silo import model_card
from fedsilo.steps import Evaluate, Fit, Prepare, Step
from fedsilo.strategies import Strategy, make_strategy
from fedsilo.transport import Courier, Transport, secured
from fedsilo.trust.credentials import ephemeral

Phase = Callable[[str, Callable[[], Any]], Any]  # runs named coordinator work (a Prefect task)


class Coordinator:
    """Runs one federated job of `scenario` through `transport`, recording it with `tracker`.

    `wrap` adds aggregation wrappers of the caller's around the scenario's (see README
    "Architecture"); `phase(name, work)` runs coordinator-side work under a name.
    """

    def __init__(
        self,
        scenario: Scenario,
        job: str,
        transport: Transport | Courier,
        tracker: Tracker,
        paths: JobPaths,
        reporters: Sequence[Reporter] = (),
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        strategy: Strategy | None = None,
        resume: ResumePoint | None = None,
        phase: Phase | None = None,
        wrap: Callable[[Aggregation], Aggregation] | None = None,
    ):
        if hasattr(transport, "deliver"):  # a bare courier: signed under keys made for this job
            transport = secured(transport, job, ephemeral(scenario.silo_names()))
        self.scenario, self.job, self.transport, self.tracker = scenario, job, transport, tracker
        self.paths, self.reporters, self.resume, self.wrap = paths, list(reporters), resume, wrap
        self.log = logger or logging.getLogger("fedsilo")
        self.strategy = strategy or make_strategy(scenario.federation)
        self.phase = phase or (lambda name, work: work())
        self.history: list[RoundRecord] = list(resume.history) if resume else []
        self.ledger = WeightLedger(self.log)

    def run(self) -> JobResult:
        """The whole job; on any failure the reason is recorded, the job's weights are deleted and
        the exception propagates (FederationError: an expected outcome, e.g. too few silos)."""
        try:
            result = self._run()
        except BaseException as exc:
            self.notify("finished", f"Job {self.job} FAILED: {exc}", self.history, True)
            self.tracker.set_tags({"fedsilo.failure": str(exc)[:5000]})
            self.tracker.finish("FAILED")
            if isinstance(exc, FederationError):
                self.log.error("job %s failed: %s; completed rounds are recorded", self.job, exc)
            raise
        finally:
            self.ledger.delete_all()
        self.tracker.finish("FINISHED")
        return result

    def _run(self) -> JobResult:
        federation = self.scenario.federation
        self.log.info(
            "job %s: %d silos (%s), %d rounds of %s; weights via %s",
            *(self.job, len(self.scenario.silos), federation.mode, federation.rounds),
            *(self.strategy.name, self.paths.root),
        )
        self._prepare()
        current, origin, model_id, final = self._start()
        fits: list[FitReport] = []
        for round_index in range(len(self.history), federation.rounds + 1):
            current, fits, final, model_id = self._round(round_index, current)
        last = Candidate(federation.rounds, current, final, model_id, None)
        chosen = kept_round(self, last)
        current, final, model_id = chosen.weights, chosen.final, chosen.model_id
        kept = keeping.keep_models(self, current)
        personalized = aftermath.personalized(self, kept)
        aftermath.compare_silos(self, fits, final, personalized, [k.alone for k in kept if k.alone])
        result = aftermath.job_result(self, chosen.round_index, personalized, kept)
        if result.privacy:
            self.tracker.set_tags({"fedsilo.privacy": result.privacy})
        self.after_rounds(current, result)
        if model_id:
            aftermath.register(self, result, model_id, current, final)
        self.notify("finished", summary(result, origin, self.scenario.evaluation), self.history, False)
        return result

    def after_rounds(self, current: WeightRef, result: JobResult) -> None:
        """Extension point: steps to ask after the last round (a subclass adds them here)."""

    def _prepare(self) -> None:
        """Silos describe their data; labels and input shape are settled; privacy wraps the strategy."""
        outcome = self.ask(Prepare(), "prepare")
        screening.screen_summaries(outcome, getattr(self.transport, "pins", {}))
        tag_left_out(self.tracker, self.notify, 0, outcome, "prepare")
        check_quorum(self.scenario, outcome, "prepare")
        summaries = list(outcome.replies.values())
        self.test_counts = {s.silo: sum(s.test_counts.values()) for s in summaries}
        for data in summaries:
            self.tracker.log_data(data)
        self.scenario, self.input_shape = settle_data(self.scenario, summaries)
        rules = UpdateRules.of(self.scenario, summaries)
        bind_strategy(self.strategy, self.scenario, rules)
        self.tracker.set_tags({"fedsilo.influence": influence.describe()})
        self.aggregation = make_aggregation(self.scenario, self.strategy, rules, self.wrap)
        meta = model_card(self.scenario, self.input_shape)
        test_cap = influence.weight_cap(list(self.test_counts.values()), influence.TEST_FACTOR)
        self.recorder = RoundRecorder(self.scenario, self.tracker, self.input_shape, meta, test_cap)
        self.best = BestRound(self.scenario, self.ledger, len(self.scenario.data.labels or []))

    def _start(self) -> tuple[WeightRef, str, str | None, list[Evaluation] | None]:
        """Round 0: the starting model scored and recorded, or the resumed job's last round."""
        if self.resume:
            current = resumed(self.resume, self.paths, self.ledger, self.aggregation)
            origin = f"round {self.resume.round_index} of the interrupted job {self.job}"
            self.tracker.set_tags({"fedsilo.resumed": origin})
            offer_resumed(self, self.resume.round_index, current, self.resume.model_id)
            self.log.info("job %s resumes after round %d", self.job, self.resume.round_index)
            return current, origin, self.resume.model_id, None
        current, origin = starting_point(
            self.scenario, self.tracker, self.paths, self.ledger, self.input_shape
        )
        self.tracker.set_tags({"fedsilo.warm_start": origin})
        self.log.info("round 0 starts from the %s", origin)
        scored = self.evaluate(current, "round-0")
        check_quorum(self.scenario, scored, "round 0")
        final = list(scored.replies.values())
        return current, origin, self._record(0, current, final, [], {}, {}, scored), final

    def _round(self, round_index: int, current: WeightRef):
        """One round: fit, screen, aggregate, evaluate, record. Returns the new global model and
        the round's fit replies, evaluations and logged model id."""
        started, label = time.perf_counter(), f"round {round_index}"
        config, extra = self.aggregation.configure_fit(round_index), strategy_tensors(self, round_index)
        outcome = self.ask(Fit(round_index, current, self.paths.root, config, extra), label)
        self.ledger.release(extra)
        screening.hold_updates(outcome, self.paths, round_index, self.ledger)
        figures, privacy = self.aggregation.account(round_index, list(outcome.replies.values()))
        labels = len(self.scenario.data.labels or [])
        screening.screen_fits(
            outcome, self.aggregation.fit_reply_problem, labels, self.test_counts, self.ledger
        )
        check_quorum(self.scenario, outcome, label)
        new, sent = influence.aggregate_round(self, round_index, current, outcome)
        tag_left_out(self.tracker, self.notify, round_index, outcome)
        check_quorum(self.scenario, outcome, label)
        fits = aftermath.full_local_models(self, round_index, list(outcome.replies.values()), current)
        self.best.release(current)
        if round_index < self.scenario.federation.rounds:  # the last round's go on to the matrix
            for fit in fits:
                self.ledger.release(fit.update)
        scored = self.evaluate(new, f"round-{round_index}", self.best.wanted)
        tag_left_out(self.tracker, self.notify, round_index, scored, "evaluation")
        final = list(scored.replies.values())
        figures |= (validation := self.best.scores(final))
        figures |= {
            "round_seconds": time.perf_counter() - started,
            "bytes_exchanged": update_bytes(current, len(fits), sent),
            "silos_answered": len(fits),
        }
        model_id = self._record(round_index, new, final, fits, figures, privacy, outcome)
        self.best.offer(Candidate(round_index, new, final, model_id, self.best.score(validation)))
        return new, fits, final, model_id

    def context(self, round_index: int) -> RoundContext:
        return round_context(self, round_index)

    def _record(self, round_index, current, final, fits, figures, privacy, outcome) -> str | None:
        left_out = sorted(outcome.left_out()) if round_index else []
        strategy_state = self.aggregation.state_dict()
        per_silo = silo_metrics(final, fits, privacy)
        record, model_id = self.recorder.record(
            round_index, current, final, fits, figures, per_silo, left_out, strategy_state
        )
        self.history.append(record)
        self.notify("round_done", record, self.history)
        return model_id

    # -- asking silos ----------------------------------------------------------------------------

    def ask(self, step: Step, label: str, silos: Sequence[str] | None = None) -> Outcome:
        """Ask `step` of `silos` (all by default) through the transport; the replies screened."""
        asked = list(silos) if silos is not None else self.scenario.silo_names()
        outcome = screen(step, asked, self.transport.ask(self.scenario, step, asked))
        for silo, reason in outcome.refused.items():
            self.log.warning("%s: reply of %s refused: %s", label, silo, reason)
        return outcome

    def evaluate(self, weights: WeightRef, name: str, validation: bool = False) -> Outcome:
        """Every silo scores `weights` on its test split (and on its validation rows, when asked);
        evaluations that do not fit are refused."""
        labels, asked = (
            len(self.scenario.data.labels or []),
            self.ask(Evaluate(weights, name, self.paths.root, validation), name),
        )
        outcome = screening.screen_evaluations(asked, labels, self.test_counts)
        self.best.screened(outcome.replies, self.log, asked=validation)
        for silo, reason in outcome.left_out().items():
            self.log.warning("%s: evaluation of %s left out: %s", name, silo, reason)
        if not outcome.replies:
            raise FederationError(f"{name}: no silo's evaluation counts ({outcome.left_out()})")
        return outcome

    def notify(self, method: str, *args) -> None:
        for reporter in self.reporters:
            try:
                getattr(reporter, method)(*args)
            except Exception as exc:  # a reporter decides nothing, and cannot fail the job either
                self.log.warning("reporter %s failed on %s: %s", type(reporter).__name__, method, exc)


def round_context(job, round_index: int) -> RoundContext:
    """What the round lends its aggregation (fedsilo.engine.aggregation.RoundContext)."""
    return RoundContext(
        round_index,
        job.paths,
        lambda step, silos: job.ask(step, step.label, silos),
        job.phase,
        job.ledger,
        lambda silos, label: check_quorum(job.scenario, silos, label),
        job.log,
    )
