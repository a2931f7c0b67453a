"""What the coordinator is given besides a transport (fedsilo.transport): a tracker that records
the job, and reporters that are told what happened. Neither decides anything."""

from pathlib import Path
from typing import Protocol

import pandas as pd

from fedsilo.messages import DataSummary
from fedsilo.records import ResumePoint, RoundRecord


class Tracker(Protocol):
    """Where a job is recorded, and the model registry its champion lives in (MLflow:
    fedsilo.tracking.FederationTracker; nothing: NullTracker)."""

    parent_id: str

    def start(self) -> str:
        """Create the job's parent run and one run per silo; returns the parent run's id."""
        ...

    def attach(self) -> ResumePoint:
        """Take up an interrupted job's runs. Raises JobNotFound when the job or a silo's run
        does not exist, or it completed no round."""
        ...

    def artifact_uri(self, folder: str) -> str:
        """A folder of the job's run artifacts (where distributed weights cross by default)."""
        ...

    def log_data(self, summary: DataSummary) -> None:
        """A silo's data description (counts and label distribution, never rows) on its run."""
        ...

    def log_global_model(
        self, round_index: int, weights_path: str, meta: dict, extra_files: dict[str, str]
    ) -> str | None:
        """The round's global model (a local safetensors file), its card `meta` and extra files
        (strategy state, LoRA adapters); returns the logged model's id, or None."""
        ...

    def log_round(
        self,
        round_index: int,
        job: dict[str, float],
        silos: dict[str, dict[str, float]],
        model_id: str | None,
    ) -> None:
        """The round's job metrics on the parent run and each silo's on its run, linked to
        `model_id` when given."""
        ...

    def log_silo_matrix(self, matrix: pd.DataFrame, metric: str) -> None:
        """The silo x silo evaluation (rows: models, columns: silos' test splits)."""
        ...

    def set_tags(self, tags: dict[str, str], silo: str | None = None) -> None:
        """Tags on the parent run, or on `silo`'s run."""
        ...

    def champion_weights(self, adapter: bool = False) -> tuple[str, str] | None:
        """The champion's version and a local path to its weights (its LoRA adapters with
        `adapter`); None when there is no champion. Raises RegistryUnavailable when the
        registry cannot be read: never taken as "no champion"."""
        ...

    def register(self, model_id: str, make_champion: bool, reason: str) -> str | None:
        """Register the logged model `model_id`, moving the champion alias when told; returns
        the version."""
        ...

    def finish(self, status: str = "FINISHED") -> None:
        """End the job's runs with `status` (FINISHED or FAILED)."""
        ...

    def log_file(self, path: Path, folder: str) -> None:
        """Keep a local file with the job's parent run under `folder` (the audit trail); nothing
        when the job never started a run."""
        ...


class Reporter(Protocol):
    """Told what happened; decides nothing, and cannot fail the job (console table, Prefect
    artifacts and events)."""

    def round_done(self, record: RoundRecord, history: list[RoundRecord]) -> None:
        """A round (round 0: the starting model) was recorded."""
        ...

    def event(self, name: str, detail: dict[str, str]) -> None:
        """Something worth an event: a silo left out, the champion moved or kept."""
        ...

    def finished(self, summary: str, history: list[RoundRecord], failed: bool) -> None:
        """The job ended, with a summary in Markdown."""
        ...


class NullTracker:
    """Records nothing and has no registry: for benchmarks and engine tests without MLflow. Keeps
    the rounds' metrics and the silo matrix in memory for them to read."""

    parent_id = ""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, float]] = {}
        self.silos: dict[str, dict[str, dict[int, float]]] = {}
        self.tags: dict[str | None, dict[str, str]] = {}
        self.matrix = None

    def start(self) -> str:
        return ""

    def attach(self) -> ResumePoint:
        from fedsilo.errors import JobNotFound

        raise JobNotFound("a NullTracker keeps no jobs to resume")

    def artifact_uri(self, folder: str) -> str:
        return ""

    def log_data(self, summary: DataSummary) -> None:
        pass

    def log_global_model(self, round_index, weights_path, meta, extra_files) -> str | None:
        return None

    def log_round(self, round_index, job, silos, model_id) -> None:
        self.rounds.setdefault(round_index, {}).update(job)
        for silo, values in silos.items():
            for key, value in values.items():
                self.silos.setdefault(silo, {}).setdefault(key, {})[round_index] = value

    def log_silo_matrix(self, matrix, metric: str) -> None:
        self.matrix = matrix

    def set_tags(self, tags: dict[str, str], silo: str | None = None) -> None:
        self.tags.setdefault(silo, {}).update(tags)

    def champion_weights(self, adapter: bool = False) -> None:
        return None

    def register(self, model_id: str, make_champion: bool, reason: str) -> None:
        return None

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def log_file(self, path: Path, folder: str) -> None:
        pass
