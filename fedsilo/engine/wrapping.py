"""Aggregations around aggregations: the `Wrapper` base privacy mechanisms (and a caller's own)
subclass, and `make_aggregation`, which stacks them in a fixed order around the strategy."""

from collections.abc import Callable, Iterator

from fedsilo.engine.aggregation import Aggregated, Aggregation, UpdateRules
from fedsilo.messages import FitReport
from fedsilo.scenario import Scenario
from fedsilo.strategies import SiloUpdate, Strategy
from fedsilo.weights import State


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
