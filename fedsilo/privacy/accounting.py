"""Privacy accounting through Opacus's RDP accountant, for both kinds of guarantee.

Record-level (DP-SGD at a silo): Poisson-sampled steps at rate q = batch_size / n_train, composed
with the one Gaussian release of the silo's noised training count (sensitivity 1, sampling rate 1).
Client-level (central DP): every silo takes part in every round, so one Gaussian step per round
at rate 1. The accountant is stateless here: epsilon after s steps is computed from (sigma, q, s),
which is exactly the history Opacus's own accountant keeps; RDP composes the count's release with
the steps exactly (orders add), as stepping Opacus's accountant once more would.
"""

import warnings
from functools import lru_cache

from fedsilo.errors import PrivacyBudgetExhausted

# Opacus is imported where it is used: importing it costs about 3 s, which a job without DP
# should not pay.

EPSILON_TOLERANCE = 0.01  # a derived noise multiplier spends the budget to within this (as Opacus)


def epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, count_noise: float | None = None
) -> float:
    """epsilon of `steps` Gaussian steps at `sample_rate` with `noise_multiplier`, at `delta`; with
    `count_noise`, composed with one release of a count under Gaussian noise of that std."""
    history = [(noise_multiplier, sample_rate, steps)] if steps > 0 else []
    if count_noise:
        history.append((count_noise, 1.0, 1))
    return composed(history, delta)


def composed(history: list[tuple[float, float, int]], delta: float) -> float:
    """epsilon at `delta` of Gaussian mechanisms given as Opacus's accountant history
    ((noise multiplier, sampling rate, steps) each), composed in RDP; 0 for none."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant  # about 3 s to import: only DP jobs pay it

    accountant = RDPAccountant()
    accountant.history = history
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound holds, looser
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=64)
def noise_for(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, count_noise: float | None = None
) -> float:
    """The smallest noise multiplier (to EPSILON_TOLERANCE) whose epsilon after `steps`, composed with
    the count's release, stays within `target_epsilon`. Raises PrivacyBudgetExhausted when the
    count's release alone spends the budget."""

    def spent(sigma: float) -> float:
        return epsilon(sigma, sample_rate, steps, delta, count_noise)

    floor = epsilon(0.0, sample_rate, 0, delta, count_noise)
    if floor >= target_epsilon:
        raise PrivacyBudgetExhausted(
            f"privacy.dp.target_epsilon {target_epsilon:g} is spent by the noised training count alone "
            f"(epsilon {floor:.3g}); raise it or privacy.dp.count_noise"
        )
    low, high = 0.0, 1.0
    while spent(high) > target_epsilon:
        low, high = high, high * 2
    while target_epsilon - spent(high) > EPSILON_TOLERANCE and high - low > 1e-6:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) > target_epsilon else (low, middle)
    return high
