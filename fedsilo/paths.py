"""Where one job's exchanged weight files live in the shared store, derived, never received.

Both sides derive every file's URI from the job's folder and a silo's name, so the coordinator
only ever holds and deletes URIs it derived itself, and a silo writes only where its own name says.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedsilo import artifacts, names


@dataclass(frozen=True)
class JobPaths:
    """A job's folder in the shared store (a folder URL, `memory://...` or MLflow artifacts).

    `<root>/global-003.safetensors`, `<root>/round-003/<silo>.safetensors`, and under secure
    aggregation `<root>/round-003/shares/<silo>.safetensors` (its sealed Shamir shares, relayed) and
    `<root>/round-003/masked-0/<silo>.safetensors` (its masked vector).
    """

    root: str

    def global_uri(self, round_index: int) -> str:
        return f"{self.root}/global-{round_index:03d}.safetensors"

    def strategy_uri(self, round_index: int) -> str:
        """What the strategy sends every silo's fit of the round beside the global model."""
        return f"{self.root}/strategy-{round_index:03d}.safetensors"

    def update_uri(self, round_index: int, silo: str) -> str:
        return f"{self.root}/round-{round_index:03d}/{silo}.safetensors"

    def local_uri(self, round_index: int, silo: str) -> str:
        """A silo's local weights rebuilt from the change it sent (for the silo x silo matrix)."""
        return f"{self.root}/round-{round_index:03d}/{silo}-local.safetensors"

    def masked_uri(self, round_index: int, attempt: int, silo: str) -> str:
        return f"{self.root}/round-{round_index:03d}/masked-{attempt}/{silo}.safetensors"

    def shares_uri(self, round_index: int, silo: str) -> str:
        """Secure aggregation: the shares a silo sealed for its peers (only they can open them)."""
        return f"{self.root}/round-{round_index:03d}/shares/{silo}.safetensors"

    def champion_uri(self) -> str:
        return f"{self.root}/champion.safetensors"

    @classmethod
    def under(cls, folder: str | Path, job_id: str) -> "JobPaths":
        """A job's folder under a local directory or a store URL (s3://, mlflow-artifacts:/...)."""
        text = str(folder)
        folder_name = names.file_name(job_id)
        if artifacts.is_url(text):
            return cls(f"{text.rstrip('/')}/{folder_name}")
        return cls(Path(text).resolve().joinpath(folder_name).as_uri())


def exchange_root(scenario, run_artifacts: Callable[[str], str]) -> str:
    """Where a job's weights cross: the scenario's store, else the job's MLflow run artifacts
    (distributed; `run_artifacts(folder)` gives their URI) or, embedded, this process's memory
    (FEDSILO_WORKDIR names a folder instead)."""
    chosen = scenario.federation.exchange or os.environ.get("FEDSILO_EXCHANGE")
    if chosen:
        return chosen
    if scenario.federation.mode == "distributed":
        return run_artifacts("exchange")
    return os.environ.get("FEDSILO_WORKDIR") or "memory://fedsilo/jobs"
