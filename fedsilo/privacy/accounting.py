"""Privacy accounting through Opacus's RDP accountant, for both kinds of guarantee.

Record-level (DP-SGD at a silo): Poisson-sampled steps at rate q = batch_size / n_train.
Client-level (central DP): every silo takes part in every round, so one Gaussian step per round
at rate 1. The accountant is stateless here: epsilon after s steps is computed from (sigma, q, s),
which is exactly the history Opacus's own accountant keeps.
"""

import warnings
from functools import lru_cache

# Opacus is imported where it is used: importing it costs about 3 s, which a job without DP
# should not pay.


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """epsilon of `steps` Gaussian steps at `sample_rate` with `noise_multiplier`, at `delta`."""
    if steps <= 0:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound holds, looser
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=64)
def noise_for(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier whose epsilon after `steps` stays within `target_epsilon`."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant="rdp",
            )
        )
