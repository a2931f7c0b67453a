"""The job's runs: one parent run (fedsilo.role=federation) and one child run per silo, created by
a new job or taken up again by a resumed one, and what is written to them round by round."""

import warnings
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Param, RunTag

from fedsilo.messages import DataSummary
from fedsilo.plots import accuracy_by_round, silo_matrix_heatmap
from fedsilo.records import RoundRecord
from fedsilo.scenario import Scenario, flatten
from fedsilo.tracking import names
from fedsilo.tracking.store import (
    code_commit,
    ensure_experiment,
    log_params,
    metrics,
    package_version,
    scenario_yaml,
)


@dataclass
class Curves:
    """The series the accuracy plot is drawn from: the job's global accuracy by round, and each
    silo's metrics (silo -> metric -> round -> value)."""

    job: dict[int, float] = field(default_factory=dict)
    silos: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    validation: dict[int, float] = field(default_factory=dict)

    def add(self, round_index: int, job: dict[str, float], silos: dict[str, dict[str, float]]) -> None:
        for silo, values in silos.items():
            for key, value in values.items():
                self.silos.setdefault(silo, {}).setdefault(key, {})[round_index] = value
        if names.GLOBAL_ACCURACY in job:
            self.job[round_index] = job[names.GLOBAL_ACCURACY]
        if names.VALIDATION_ACCURACY in job:
            self.validation[round_index] = job[names.VALIDATION_ACCURACY]

    def series(self, silo: str, key: str) -> dict[int, float]:
        return self.silos.get(silo, {}).get(key, {})

    def record(self, r: int, rounds: int, seconds: float) -> RoundRecord:
        """Round `r` as the coordinator recorded it; a silo whose `answered` is 0 was absent."""
        local = {s: self.series(s, names.LOCAL_ACCURACY) for s in self.silos}
        global_ = {s: self.series(s, names.GLOBAL_ACCURACY) for s in self.silos}
        return RoundRecord(
            r,
            rounds,
            self.job[r],
            silo_local={s: h[r] for s, h in local.items() if r in h},
            silo_global={s: h[r] for s, h in global_.items() if r in h},
            seconds=seconds,
            missing=[s for s in self.silos if self.series(s, names.ANSWERED).get(r) == 0.0],
            validation_accuracy=self.validation.get(r),
        )


class JobRuns:
    """The parent and silo runs of one job, addressed by run id (never MLflow's active run)."""

    def __init__(self, client: MlflowClient, scenario: Scenario, job: str):
        self.client, self.scenario, self.job = client, scenario, job
        self.experiment_id = ""
        self.parent_id = ""
        self.silo_runs: dict[str, str] = {}
        self.curves = Curves()

    def start(self) -> str:
        """Create the parent run and one child run per silo; return the parent run id."""
        self.experiment_id = ensure_experiment(self.client, self.scenario)
        common = {names.SCENARIO: self.scenario.name, names.JOB: self.job}
        parent_tags = {names.ROLE: names.FEDERATION, names.NOTE: self.scenario.description}
        parent = self.client.create_run(self.experiment_id, run_name=self.job, tags=common | parent_tags)
        self.parent_id = parent.info.run_id
        log_params(self.client, self.parent_id, flatten(self.scenario))
        self._record_origin()
        for silo in self.scenario.silo_names():
            tags = {names.ROLE: names.SILO_ROLE, names.SILO: silo, names.PARENT: self.parent_id}
            run = self.client.create_run(
                self.experiment_id, run_name=f"{self.job}/{silo}", tags=common | tags
            )
            self.silo_runs[silo] = run.info.run_id
        return self.parent_id

    def _record_origin(self) -> None:
        """The resolved scenario and the code's version on the parent run: enough to rerun the job."""
        self.client.log_text(self.parent_id, scenario_yaml(self.scenario), names.SCENARIO_FILE)
        tags = {names.VERSION: package_version("fedsilo")}
        if commit := code_commit():
            tags[names.GIT_COMMIT] = commit
        self.set_tags(tags)

    def take_up(self, experiment_id: str, parent_id: str, silo_runs: dict[str, str], curves: Curves) -> None:
        """Write to an interrupted job's runs again: mark them RUNNING, keep its curves so far."""
        self.experiment_id, self.parent_id = experiment_id, parent_id
        self.silo_runs, self.curves = dict(silo_runs), curves
        for run_id in [parent_id, *self.silo_runs.values()]:
            self.client.update_run(run_id, status="RUNNING")

    def artifact_uri(self, folder: str) -> str:
        return f"{self.client.get_run(self.parent_id).info.artifact_uri.rstrip('/')}/{folder}"

    def log_data(self, summary: DataSummary) -> None:
        """A silo's data as an MLflow dataset input (label counts only) and its sizes as params."""
        run_id = self.silo_runs[summary.silo]
        self.client.log_inputs(run_id, datasets=[_dataset_input(summary, self.scenario.name)])
        self.client.log_batch(
            run_id,
            params=[
                Param("num_train", str(sum(summary.train_counts.values()))),
                Param("num_test", str(sum(summary.test_counts.values()))),
                Param("data_version", summary.version[:16]),
            ],
        )

    def log_round(
        self,
        round_index: int,
        job: dict[str, float],
        silos: dict[str, dict[str, float]],
        model_id: str | None,
    ) -> None:
        """Each silo's metrics, then the parent's (linked to the model), then the accuracy plot."""
        for silo, values in silos.items():
            self.client.log_batch(self.silo_runs[silo], metrics=metrics(values, round_index))
        self.client.log_batch(self.parent_id, metrics=metrics(job, round_index, model_id))
        self.curves.add(round_index, job, silos)
        figure = accuracy_by_round(self.curves.job, self.curves.silos, self.curves.validation)
        self._log_figure(figure, names.ACCURACY_PLOT)

    def log_silo_matrix(self, matrix: pd.DataFrame, metric: str) -> None:
        self.client.log_table(self.parent_id, matrix.reset_index(), names.MATRIX_TABLE)
        self._log_figure(silo_matrix_heatmap(matrix, metric), names.MATRIX_PLOT)

    def _log_figure(self, figure, path: str) -> None:
        try:
            self.client.log_figure(self.parent_id, figure, path)
        finally:
            plt.close(figure)

    def set_tags(self, tags: dict[str, str], silo: str | None = None) -> None:
        run_id = self.silo_runs[silo] if silo else self.parent_id
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str) -> None:
        for run_id in [*self.silo_runs.values(), self.parent_id]:
            if run_id:
                self.client.set_terminated(run_id, status)


def _dataset_input(summary: DataSummary, scenario: str) -> DatasetInput:
    """The silo's label counts (train and test) as an MLflow dataset, its digest the data version."""
    labels = sorted(set(summary.train_counts) | set(summary.test_counts))
    table = pd.DataFrame(
        {
            "label": labels,
            "train": [summary.train_counts.get(x, 0) for x in labels],
            "test": [summary.test_counts.get(x, 0) for x in labels],
        }
    )
    with warnings.catch_warnings():  # integer counts are intended; MLflow hints about NaNs
        warnings.simplefilter("ignore")
        dataset = mlflow.data.from_pandas(
            table, name=f"{scenario}/{summary.silo}", targets="label", digest=summary.version[:16] or None
        )
        return DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])
