"""Central (client-level) DP as a wrapper: each update clipped, every silo counted once, the sum
noised before the strategy's step (DP-FedAvg; the maths is in fedsilo.privacy.central).

Scenario fields: `privacy.central_dp` (noise_multiplier, clipping_norm, delta). Works around any
strategy that steps from a mean (`Strategy.apply`), and under secure aggregation (the silos clip,
the noise goes on the unmasked sum).
"""

from fedsilo.engine.aggregation import Aggregation
from fedsilo.engine.wrapping import Wrapper
from fedsilo.privacy import central
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.secagg import float_names
from fedsilo.scenario import CentralDPSpec, Scenario
from fedsilo.strategies import WeightedSum


class CentralDP(Wrapper):
    """Clip, count once, noise the sum; spends a client-level epsilon per round."""

    def __init__(self, inner: Aggregation, spec: CentralDPSpec):
        super().__init__(inner)
        self.spec = spec

    def weight_of(self, silos: list[str]) -> int:
        return len(silos)  # each silo counts once, whatever it trained on

    def aggregate(self, ctx, current, replies, combine=None):
        return self.inner.aggregate(ctx, current, replies, combine or self._clipped_mean)

    def _clipped_mean(self, current, updates):
        total = WeightedSum()
        for update in updates:
            clipped, _ = central.clip_to_norm(update.state, current, self.spec.clipping_norm)
            total.add(clipped, 1)
        mean = total.mean()
        delta_sum = {n: (mean[n].double() - current[n].double()) * total.count for n in float_names(current)}
        return self.step_from_sum(current, mean, delta_sum, total.count)

    def step_from_sum(self, current, average, delta_sum, total_weight):
        std = self.spec.noise_multiplier * self.spec.clipping_norm
        noised = central.add_noise(delta_sum, std, central.noise_generator())
        return self.inner.step_from_sum(current, average, noised, total_weight)

    def account(self, round_index, replies):
        figures, per_silo = self.inner.account(round_index, replies)
        spec = self.spec
        return figures | {
            "central_epsilon": epsilon(spec.noise_multiplier, 1.0, round_index, spec.delta)
        }, per_silo

    def statement(self, rounds: int) -> str:
        spec = self.spec
        spent = epsilon(spec.noise_multiplier, 1.0, rounds, spec.delta)
        own = f"client-level central DP over {rounds} rounds, epsilon {spent:.3g} (delta {spec.delta:g})"
        return "; ".join(filter(None, [self.inner.statement(rounds), own]))


def wrap(scenario: Scenario, inner: Aggregation) -> Aggregation:
    """`inner` under central DP when the scenario turns it on."""
    spec = scenario.privacy.central_dp
    return CentralDP(inner, spec) if spec is not None else inner
