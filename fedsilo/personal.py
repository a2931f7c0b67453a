"""Personal layers (FedPer / FedRep, FedBN-style norms): tensors that stay at each silo.

`federation.personal_layers` names tensors by pattern (fnmatch over the model's state names, e.g.
`classifier.*` or `*LayerNorm*`). A silo trains them with the rest, keeps its own copy on its own
disk for the job, and puts it back into every model it loads (a global model it trains from or
scores, a candidate it keeps). What it sends carries the global model's values in their place, so
their change is exactly zero and nothing of them crosses; the coordinator also keeps the global
model's values for them whatever a silo sends. The global model registered for the federation is
therefore the shared part with the starting values of the personal tensors (the starting head).
"""

import fnmatch
from collections.abc import Iterable

from fedsilo.errors import FederationError
from fedsilo.silo_store import RoundStore
from fedsilo.weights import State


def personal_names(patterns: Iterable[str], names: Iterable[str]) -> set[str]:
    """The tensor names any of `patterns` matches."""
    patterns = list(patterns)
    return {name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)}


def check_patterns(patterns: list[str], state: State) -> None:
    """Refuse patterns that match no tensor of the model, or that leave nothing to federate."""
    for pattern in patterns:
        if not personal_names([pattern], state):
            example = ", ".join(sorted(state)[-3:])
            raise FederationError(
                f"federation.personal_layers: {pattern!r} matches no tensor of the model; names look "
                f"like {example}"
            )
    floats = {name for name, tensor in state.items() if tensor.is_floating_point()}
    if floats and floats <= personal_names(patterns, floats):
        raise FederationError("federation.personal_layers matches every weight: nothing would be federated")


def with_global_values(state: State, global_state: State, patterns: Iterable[str]) -> State:
    """`state` with its personal tensors replaced by the global model's (what a silo sends, and
    what the coordinator reads of any update)."""
    if not patterns:
        return state
    names = personal_names(patterns, state) & set(global_state)
    return state | {name: global_state[name] for name in names}


class PersonalStore:
    """One silo's personal tensors per job and round (fedsilo.silo_store.RoundStore)."""

    def __init__(self, silo: str, patterns: list[str]):
        self.patterns = list(patterns)
        self.rounds = RoundStore(silo, "personal")

    def remember(self, job: str, round_index: int, state: State) -> None:
        """Keep the personal tensors of `state` (the silo's model after round `round_index`)."""
        if self.patterns and job:
            self.rounds.remember(
                job, round_index, {n: state[n] for n in personal_names(self.patterns, state)}
            )

    def own(self, job: str, before_round: int | None = None) -> State | None:
        """The silo's personal tensors for `job` after its latest round (before `before_round`
        when given), or None before it first trained in it."""
        return self.rounds.latest(job, before_round) if self.patterns and job else None

    def spliced(self, job: str, state: State, before_round: int | None = None) -> State:
        """`state` with the silo's own personal tensors for `job` in place (as is before any)."""
        own = self.own(job, before_round)
        if not own:
            return state
        return state | {name: tensor for name, tensor in own.items() if name in state}
