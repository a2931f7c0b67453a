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
import hashlib
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import load_file, save_file

from fedsilo.errors import FederationError
from fedsilo.privacy.pending import state_folder
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
    """One silo's personal tensors per job and round, in its private folder (kept across
    restarts). A fit of round r starts from those of the latest round before r, so a retried or
    resumed round trains them from the same values as the first try did."""

    def __init__(self, silo: str, patterns: list[str]):
        self.silo, self.patterns = silo, list(patterns)

    def _folder(self, job: str) -> Path:
        folder = state_folder(self.silo) / f"personal-{hashlib.sha256(job.encode()).hexdigest()[:24]}"
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def remember(self, job: str, round_index: int, state: State) -> None:
        """Keep the personal tensors of `state` (the silo's model after round `round_index`)."""
        if not (self.patterns and job):
            return
        own = {n: state[n].detach().clone().contiguous() for n in personal_names(self.patterns, state)}
        save_file(own, str(self._folder(job) / f"round-{round_index:05d}.safetensors"))

    def own(self, job: str, before_round: int | None = None) -> State | None:
        """The silo's personal tensors for `job` after its latest round (before `before_round`
        when given), or None before it first trained in it."""
        if not (self.patterns and job):
            return None
        rounds = sorted(self._folder(job).glob("round-*.safetensors"))
        if before_round is not None:
            rounds = [path for path in rounds if int(path.stem.removeprefix("round-")) < before_round]
        return load_file(str(rounds[-1])) if rounds else None

    def spliced(self, job: str, state: State, before_round: int | None = None) -> State:
        """`state` with the silo's own personal tensors for `job` in place (as is before any)."""
        own = self.own(job, before_round)
        if not own:
            return state
        return state | {name: tensor for name, tensor in own.items() if name in state}
