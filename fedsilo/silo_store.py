"""Tensors a silo keeps for itself per job and round, in its private folder (kept across
restarts): its personal layers, its SCAFFOLD control variate. A fit of round r reads what was
kept after the latest round before r, so a retried or resumed round starts from the same values
as its first try did."""

import hashlib
from pathlib import Path

from safetensors.torch import load_file, save_file

from fedsilo.privacy.pending import state_folder
from fedsilo.weights import State


class RoundStore:
    """One silo's tensors of one `kind`, per job and round. Only the last two rounds are kept: a
    retry of round r reads round r - 1, whatever r was tried last."""

    def __init__(self, silo: str, kind: str):
        self.silo, self.kind = silo, kind

    def _folder(self, job: str) -> Path:
        return state_folder(self.silo) / f"{self.kind}-{hashlib.sha256(job.encode()).hexdigest()[:24]}"

    def _rounds(self, job: str) -> dict[int, Path]:
        folder = self._folder(job)
        paths = folder.glob("round-*.safetensors") if folder.is_dir() else []
        return {int(path.stem.removeprefix("round-")): path for path in paths}

    def remember(self, job: str, round_index: int, state: State) -> None:
        """Keep `state` as this silo's after round `round_index` of `job` (and forget older rounds
        than the one before it)."""
        folder = self._folder(job)
        folder.mkdir(mode=0o700, exist_ok=True)
        tensors = {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}
        save_file(tensors, str(folder / f"round-{round_index:05d}.safetensors"))
        for kept, path in self._rounds(job).items():
            if kept < round_index - 1:
                path.unlink(missing_ok=True)

    def latest(self, job: str, before_round: int | None = None) -> State | None:
        """What was kept after the job's latest round (before `before_round` when given), or None."""
        found = self.latest_round(job, before_round)
        return found[1] if found else None

    def latest_round(self, job: str, before_round: int | None = None) -> tuple[int, State] | None:
        """(round, what was kept after it) for the job's latest round before `before_round`."""
        rounds = self._rounds(job)
        kept = [r for r in rounds if before_round is None or r < before_round]
        return (max(kept), load_file(str(rounds[max(kept)]))) if kept else None

    def forget_from(self, job: str, round_index: int) -> None:
        """Delete what was kept after round `round_index` and later: an earlier try of this round,
        or an earlier job under the same name, which the round about to run replaces."""
        for kept, path in self._rounds(job).items():
            if kept >= round_index:
                path.unlink(missing_ok=True)
