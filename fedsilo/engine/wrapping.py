"""Aggregations around aggregations: the `Wrapper` base privacy mechanisms (and a caller's own)
subclass, and `make_aggregation`, which stacks them in a fixed order around the strategy; the
strategy told the job's facts, and the tensors it sends each fit."""

from collections.abc import Callable, Iterator

from fedsilo.engine.aggregation import Aggregated, Aggregation, UpdateRules
from fedsilo.messages import FitReport, WeightRef
from fedsilo.scenario import Scenario
from fedsilo.strategies import RunFacts, SiloUpdate, Strategy
from fedsilo.weights import State, write_state


class Wrapper(Aggregation):
    """An aggregation around another: every call goes to `inner` unless the wrapper overrides it."""

    def __init__(self, inner: Aggregation):
        self.inner = inner
        self.strategy, self.rules = inner.strategy, inner.rules

    def configure_fit(self, round_index: int) -> dict[str, float]:
        return self.inner.configure_fit(round_index)

    def fit_reply_problem(self, reply: FitReport, expects_update: bool = True) -> str | None:
        return self.inner.fit_reply_problem(reply, expects_update)

    def weight_of(self, silos: list[str]) -> int:
        return self.inner.weight_of(silos)

    def aggregate(self, ctx, current, replies, combine=None) -> Aggregated:
        return self.inner.aggregate(ctx, current, replies, combine)

    def screened_norms(self, global_state, replies, refused) -> dict[str, float]:
        return self.inner.screened_norms(global_state, replies, refused)

    def bounded_updates(self, global_state, replies, norms, bound) -> Iterator[SiloUpdate]:
        return self.inner.bounded_updates(global_state, replies, norms, bound)

    def step_from_sum(self, current, average, delta_sum, total_weight) -> State:
        return self.inner.step_from_sum(current, average, delta_sum, total_weight)

    def account(self, round_index, replies):
        return self.inner.account(round_index, replies)

    def statement(self, rounds: int) -> str:
        return self.inner.statement(rounds)

    def state_dict(self) -> State:
        return self.inner.state_dict()

    def load_state_dict(self, state: State) -> None:
        self.inner.load_state_dict(state)


def make_aggregation(
    scenario: Scenario,
    strategy: Strategy,
    rules: UpdateRules,
    wrap: Callable[[Aggregation], Aggregation] | None = None,
) -> Aggregation:
    """The strategy behind the update checks, wrapped first in the caller's `wrap` (if any), then
    in the scenario's privacy mechanisms (central DP, DP-SGD accounting, secure aggregation), so
    privacy is always outermost and a mechanism's sum reaches every inner wrapper's step."""
    from fedsilo.privacy import central_dp, dp_sgd, secure_aggregation

    aggregation = Aggregation(strategy, rules)
    if wrap is not None:
        aggregation = wrap(aggregation)
    for mechanism in (central_dp, dp_sgd, secure_aggregation):
        aggregation = mechanism.wrap(scenario, aggregation)
    return aggregation


def bind_strategy(strategy: Strategy, scenario: Scenario, rules: UpdateRules) -> None:
    """Tell the strategy the job's facts once the silos have described their data."""
    fed = scenario.federation
    facts = (len(scenario.silos), fed.learning_rate, fed.local_steps, fed.epochs, fed.batch_size)
    strategy.bind(RunFacts(*facts, dict(rules.trained_on)))


def strategy_tensors(job, round_index: int) -> WeightRef | None:
    """What the strategy sends every silo's fit beside the global model (SCAFFOLD's c), or None."""
    tensors = job.strategy.fit_tensors()
    if not tensors:
        return None
    return job.ledger.hold(write_state(tensors, job.paths.strategy_uri(round_index)))
