"""`FederationTracker`: the engine's one handle on MLflow, composed of the job's runs, the model
packaging and the registry (each in its own module)."""

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from fedsilo.messages import DataSummary
from fedsilo.records import ResumePoint
from fedsilo.scenario import Scenario
from fedsilo.tracking import names
from fedsilo.tracking.packaging import log_global_model
from fedsilo.tracking.registry import Registry, champion_files
from fedsilo.tracking.resume import resume_point, unfinished_job
from fedsilo.tracking.runs import JobRuns


class FederationTracker:
    """Records one federated job in MLflow in fedsilo's layout (see `fedsilo.tracking`).

    Every call names its run ids on one MlflowClient, so an MLflow run the caller already has
    active is neither used nor disturbed. Reads raise `fedsilo.errors.RegistryUnavailable` when the
    store cannot answer and `JobNotFound` when a job is not there; a write the store refuses raises
    MLflow's own `MlflowException`.
    """

    def __init__(self, scenario: Scenario, job_name: str, tracking_uri: str | None = None):
        """Args: the job's scenario; its name (the parent run's name and `fedsilo.job` tag); the
        tracking URI (default: MLflow's, i.e. MLFLOW_TRACKING_URI). Contacts nothing yet."""
        self.scenario = scenario
        self.job_name = job_name
        self.client = MlflowClient(tracking_uri)
        self.runs = JobRuns(self.client, scenario, job_name)
        self.registry = Registry(self.client, scenario)

    @property
    def parent_id(self) -> str:
        """The job's parent run id; empty before `start()` or `attach()`."""
        return self.runs.parent_id

    @property
    def tracking_uri(self) -> str:
        """The tracking URI this tracker writes to."""
        return self.client.tracking_uri

    def artifact_uri(self, folder: str) -> str:
        """The URI of `folder` in the parent run's artifacts (served by the tracking server when
        it has one). Needs `start()` or `attach()` first."""
        return self.runs.artifact_uri(folder)

    def start(self) -> str:
        """Create the experiment if missing, the parent run (flattened scenario as params, the
        resolved `scenario.yaml`, code version) and one child run per silo. Returns the parent
        run id. Raises MlflowException when the store refuses."""
        return self.runs.start()

    def attach(self) -> ResumePoint:
        """Take up this job's existing, unfinished runs again (status RUNNING) and return where it
        stopped: its last round with both the global model logged and `global_accuracy` recorded.

        Raises:
            JobNotFound: no job of this name, it already finished, a silo has no run, or no round
                completed with a logged model (nothing to resume).
            RegistryUnavailable: the store or the model's artifacts could not be read.
        """
        ids = unfinished_job(self.client, self.scenario, self.job_name)
        point, curves = resume_point(self.client, ids, self.job_name, self.scenario.federation.rounds)
        self.runs.take_up(ids.experiment_id, ids.parent_id, ids.silo_runs, curves)
        return point

    def log_data(self, summary: DataSummary) -> None:
        """Record a silo's data on its run: label counts as an MLflow dataset input (never rows),
        `num_train`, `num_test` and `data_version` params. KeyError for a silo with no run."""
        self.runs.log_data(summary)

    def log_global_model(
        self, round_index: int, weights_path: str, meta: dict, extra_files: dict[str, str] | None = None
    ) -> str:
        """Log round `round_index`'s global model (weights file, `meta` for the pyfunc loader, and
        `extra_files` {name: path} such as the strategy state) as a LoggedModel with step = round.
        Returns its model_id, to pass to `log_round` and `register`."""
        return log_global_model(self.runs, round_index, weights_path, meta, extra_files)

    def log_round(
        self,
        round_index: int,
        job: dict[str, float],
        silos: dict[str, dict[str, float]],
        model_id: str | None = None,
    ) -> None:
        """Log a round's metrics with step = round: one batch per silo run, then the parent's
        `job` metrics linked to `model_id`, then the accuracy plot. The parent's come last: a round
        whose `global_accuracy` is on the parent run is recorded whole (what `attach` relies on)."""
        self.runs.log_round(round_index, job, silos, model_id)

    def log_silo_matrix(self, matrix: pd.DataFrame, metric: str) -> None:
        """Log the silo x silo evaluation (rows: models, columns: silos' test splits, index named
        `model`) as `silo_matrix.json` and a heatmap of `metric` on the parent run."""
        self.runs.log_silo_matrix(matrix, metric)

    def set_tags(self, tags: dict[str, str], silo: str | None = None) -> None:
        """Set `tags` (values turned to str) on the parent run, or on `silo`'s run."""
        self.runs.set_tags(tags, silo)

    def champion(self) -> tuple[str, str] | None:
        """(version, model URI) of the registered model's `champion`, or None only when the
        registry says there is none. Raises RegistryUnavailable when it cannot answer."""
        return self.registry.champion()

    def champion_weights(self, adapter: bool = False) -> tuple[str, str] | None:
        """(version, local weights file) of the champion, or None when there is none; with
        `adapter`, its LoRA adapters when it has them (what a LoRA job starts from).
        Raises RegistryUnavailable when the registry or the model's files cannot be read."""
        registered = self.champion()
        if registered is None:
            return None
        version, model_uri = registered
        return version, champion_files(version, model_uri, adapter)

    def register(self, model_id: str, make_champion: bool, reason: str) -> str:
        """Register logged model `model_id` as a new version of `<scenario>-global` (description:
        `reason`), move `champion` to it when `make_champion`, and tag the parent run with the
        outcome. Returns the version number. Raises MlflowException when the registry refuses."""
        version = self.registry.register(model_id, self.parent_id, self.job_name, make_champion, reason)
        self.set_tags(
            {
                names.REGISTERED_VERSION: version,
                names.CHAMPION_TAG: str(make_champion),
                names.CHAMPION_REASON: reason,
            }
        )
        return version

    def finish(self, status: str = "FINISHED") -> None:
        """End the silo runs and the parent run with `status` (FINISHED, FAILED or KILLED)."""
        self.runs.finish(status)

    def log_file(self, path: Path, folder: str) -> None:
        """Keep the local file `path` with the parent run under `folder` (also once it has ended)."""
        if self.parent_id:
            self.client.log_artifact(self.parent_id, str(path), folder)
