"""Record-level DP-SGD: the silo's training hook and the coordinator's accounting wrapper.

At the silo, `DPTraining` replaces plain training (Opacus, fedsilo.privacy.dp), declines a fit
whose delta is not below 1/n or that would take the silo's budget ledger
(fedsilo.privacy.budget_ledger) past `privacy.dp.target_epsilon`, whatever round number the
request carries, and releases its reply without the training loss or wall time (what the noise
does not cover). At the coordinator, `DPSGDAccounting` refuses an epsilon no accountant gives,
logs each silo's epsilon and the worst one, and states the guarantee. Scenario fields:
`privacy.dp` (noise_multiplier or target_epsilon, delta, max_grad_norm, count_noise, secure_mode).
"""

import math
from dataclasses import replace

from fedsilo.engine.aggregation import Aggregation
from fedsilo.engine.wrapping import Wrapper
from fedsilo.messages import FitReport
from fedsilo.privacy import dp
from fedsilo.privacy.budget_ledger import BudgetKey, BudgetLedger, Charge, Reservation
from fedsilo.scenario import Scenario


def plausible_epsilon(value: float) -> bool:
    """An epsilon an accountant can give: finite and not negative (a silo's report is untrusted)."""
    return math.isfinite(value) and value >= 0


class DPTraining:
    """DP-SGD as a silo's training hook; see fedsilo.silo.Training. `job` names the job in the
    ledger's charges (for whoever reads the ledger; the budget does not depend on it)."""

    def __init__(self, spec, job: str = ""):
        self.spec = spec
        self.job = job
        self.plan: dp.DPPlan | None = None
        self.reservation: Reservation | None = None

    def budget(self, silo, settings, round_index: int) -> float:
        """The silo's epsilon after this fit, from its budget ledger, in which the fit is reserved
        here. Declines (SiloDeclined, with the epsilon spent so far) when delta is not below 1/n,
        or when the ledger's charges with this fit's would pass target_epsilon: the ledger decides,
        not `round_index`, which is only recorded."""
        rounds = silo.scenario.federation.rounds
        self.plan = dp.plan(self.spec, silo.num_examples, settings, rounds)
        self.plan.check_delta()
        plan = self.plan
        key = BudgetKey(silo.rows_version, plan.delta)
        charge = Charge(
            plan.noise_multiplier,
            plan.sample_rate,
            plan.steps_per_round,
            plan.count_noise,
            count_draw=silo.version,
            job=self.job,
            round=round_index,
        )
        self.reservation = BudgetLedger.for_silo(silo.silo).reserve(key, charge, plan.target_epsilon)
        return self.reservation.epsilon

    def train(self, silo, settings, progress):
        """DP-SGD for one round. A training that fails (nothing has left the silo) gives its
        reservation back; once it succeeds the charge stays, whatever happens to the reply."""
        try:
            loss = dp.dp_fit(silo.model, silo.train, settings, self.plan, progress)
        except BaseException:
            if self.reservation is not None:
                self.reservation.cancel()
            raise
        return loss, self.plan.steps_per_round

    def release(self, report: FitReport) -> FitReport:
        """The reply without what DP-SGD's noise does not cover: the training loss (a plain average
        over sampled rows) and the wall time (it grows with the rows sampled); both go out as NaN."""
        nan = float("nan")
        return replace(report, train_loss=nan, seconds=nan)


def training_for(scenario: Scenario, job: str = "") -> DPTraining | None:
    """The silo's training hook: DP-SGD when the scenario asks for it, else plain (None)."""
    return DPTraining(scenario.privacy.dp, job) if scenario.privacy.dp else None


class DPSGDAccounting(Wrapper):
    """What the coordinator does about DP-SGD: screen and log the silos' epsilons, state the bound."""

    def __init__(self, inner: Aggregation, spec):
        super().__init__(inner)
        self.spec = spec
        self.spent_by_round: dict[int, dict[str, float]] = {}

    def fit_reply_problem(self, reply: FitReport, expects_update: bool = True) -> str | None:
        if reply.epsilon is not None and not plausible_epsilon(reply.epsilon):
            return f"reported epsilon {reply.epsilon!r}"
        return self.inner.fit_reply_problem(reply, expects_update)

    def account(self, round_index, replies):
        """Each silo's epsilon so far (also of silos that declined because theirs ran out)."""
        figures, per_silo = self.inner.account(round_index, replies)
        spent = {r.silo: r.epsilon for r in replies if r.epsilon is not None and plausible_epsilon(r.epsilon)}
        self.spent_by_round[round_index] = spent
        if spent:
            figures = figures | {"max_silo_epsilon": max(spent.values())}
        for silo, value in spent.items():
            per_silo = per_silo | {silo: per_silo.get(silo, {}) | {"epsilon": value}}
        return figures, per_silo

    def statement(self, rounds: int) -> str:
        worst = max((e for r in self.spent_by_round.values() for e in r.values()), default=0.0)
        own = f"record-level DP-SGD at each silo, epsilon <= {worst:.3g} (delta {self.spec.delta:g})"
        return "; ".join(filter(None, [own, self.inner.statement(rounds)]))


def wrap(scenario: Scenario, inner: Aggregation) -> Aggregation:
    """`inner` with DP-SGD's accounting when the scenario turns DP-SGD on."""
    return DPSGDAccounting(inner, scenario.privacy.dp) if scenario.privacy.dp else inner
