"""The MLflow layout of a federated job, behind one small class. The only module that imports MLflow.

experiment = scenario name; a parent run (fedsilo.role=federation) with the flattened scenario as
params and the global metrics per round; a child run per silo (fedsilo.role=silo,
fedsilo.silo=<name>) with its metrics per round and its data summary as a dataset input; the
global model of every round as a LoggedModel whose metrics are linked by model_id; the final model
registered as `<scenario>-global`, alias `champion` moved only when the new model is as good.

Everything goes through MlflowClient with explicit run ids, so an MLflow run that the caller
already has active is neither used nor disturbed.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from fedsilo.artifacts import download_model
from fedsilo.messages import DataSummary
from fedsilo.plots import accuracy_by_round, silo_matrix_heatmap
from fedsilo.records import ADAPTER, ResumePoint, RoundRecord
from fedsilo.scenario import Scenario, flatten

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # fedsilo/ and models/ ship inside each logged model
# What loading a logged model imports, pinned to this environment's versions: fedsilo itself is
# not on any package index, so its code travels with the model (code_paths) instead.
_SERVING_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "pydantic",
    "pyyaml",
    "pandas",
    "numpy",
    "fsspec",
    "scikit-learn",
)


def serving_requirements() -> list[str]:
    return [f"{name}=={_version(name)}" for name in _SERVING_PACKAGES]


ROLE, SILO = "fedsilo.role", "fedsilo.silo"
CHAMPION = "champion"
MATRIX_TABLE = "silo_matrix.json"
SCENARIO_FILE = "scenario.yaml"
STRATEGY_STATE = "strategy_state.safetensors"

# Model training, not GenAI: the MLflow UI then opens the experiment on its runs table.
KIND_TAG = "mlflow.experimentKind"
KIND = {KIND_TAG: "custom_model_development"}
_BATCH_LIMIT = 100  # MLflow accepts at most 100 params per log_batch call


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metrics(values: dict[str, float], step: int, model_id: str | None = None) -> list[Metric]:
    stamp = _now_ms()
    return [Metric(k, float(v), stamp, step, model_id=model_id) for k, v in values.items()]


def ensure_experiment(client: MlflowClient, scenario: Scenario) -> str:
    """The id of the scenario's experiment, created with its domain and kind tags if missing
    (by a job, or by the stack's mlflow-users service before any job has run)."""
    name = scenario.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={"fedsilo.domain": scenario.domain, **KIND})
        except MlflowException:  # created meanwhile by another process
            experiment = client.get_experiment_by_name(name)
    if KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND[KIND_TAG])
    return experiment.experiment_id


class FederationTracker:
    """Writes one federated job to MLflow in the layout above."""

    def __init__(self, scenario: Scenario, job_name: str, tracking_uri: str | None = None):
        self.scenario = scenario
        self.job_name = job_name
        self.client = MlflowClient(tracking_uri)
        self.parent_id = ""
        self.silo_runs: dict[str, str] = {}
        self.history: dict[str, dict[str, dict[int, float]]] = {}
        self.federation_history: dict[int, float] = {}

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    def start(self) -> str:
        """Create the parent run and one child run per silo; return the parent run id."""
        self.experiment_id = ensure_experiment(self.client, self.scenario)
        common = {"fedsilo.scenario": self.scenario.name, "fedsilo.job": self.job_name}
        parent = self.client.create_run(
            self.experiment_id,
            run_name=self.job_name,
            tags={**common, ROLE: "federation", "mlflow.note.content": self.scenario.description},
        )
        self.parent_id = parent.info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten(self.scenario).items()]
        for start in range(0, len(params), _BATCH_LIMIT):
            self.client.log_batch(self.parent_id, params=params[start : start + _BATCH_LIMIT])
        self._record_origin()
        for silo in self.scenario.silo_names():
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"{self.job_name}/{silo}",
                tags={**common, ROLE: "silo", SILO: silo, "mlflow.parentRunId": self.parent_id},
            )
            self.silo_runs[silo] = run.info.run_id
        return self.parent_id

    def _record_origin(self) -> None:
        """The resolved scenario and the code's version on the parent run: enough to rerun the job."""
        self.client.log_text(self.parent_id, scenario_yaml(self.scenario), SCENARIO_FILE)
        tags = {"fedsilo.version": _version("fedsilo")}
        commit = code_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        self.set_tags(tags)

    def attach(self) -> ResumePoint:
        """Take up this job's existing parent and silo runs again; return where it stopped.

        The last completed round is the last one with both its global model logged and its
        `global_accuracy` on the parent run (logged after every silo's metrics of the round).
        """
        self.experiment_id = ensure_experiment(self.client, self.scenario)
        parent = self._job_run()
        if parent.info.status == "FINISHED":
            raise LookupError(
                f"job {self.job_name!r} already finished (run {parent.info.run_id}); "
                f"rerun it with `fedsilo run --from-run {parent.info.run_id}`"
            )
        self.parent_id = parent.info.run_id
        children = self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}'"
        )
        self.silo_runs = {run.data.tags[SILO]: run.info.run_id for run in children if SILO in run.data.tags}
        absent = sorted(set(self.scenario.silo_names()) - set(self.silo_runs))
        if absent:
            raise LookupError(f"job {self.job_name!r} has no MLflow run for silo(s) {', '.join(absent)}")
        models = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{self.parent_id}'"
        )
        by_round = {int(m.tags["fedsilo.round"]): m.model_id for m in models if "fedsilo.round" in m.tags}
        recorded = {m.step for m in self.client.get_metric_history(self.parent_id, "global_accuracy")}
        completed = sorted(set(by_round) & recorded)
        if not completed:
            raise LookupError(
                f"job {self.job_name!r} has no completed round with a logged model to resume from "
                "(it needs tracking.log_models: true)"
            )
        last = completed[-1]
        weights, state, adapter = logged_model_files(f"models:/{by_round[last]}")
        weights = adapter or weights  # a LoRA job goes on from its adapters, not the merged model
        history = self._history_until(last)
        for run_id in [self.parent_id, *self.silo_runs.values()]:
            self.client.update_run(run_id, status="RUNNING")
        return ResumePoint(last, weights, state, by_round[last], history)

    def _job_run(self):
        return latest_job_run(self.client, self.scenario.experiment_name, self.job_name)

    def _series(self, run_id: str, key: str, last: int) -> dict[int, float]:
        return {m.step: m.value for m in self.client.get_metric_history(run_id, key) if m.step <= last}

    def _history_until(self, last: int) -> list[RoundRecord]:
        """The job's rounds 0..last as the coordinator recorded them, rebuilt from MLflow (plots too)."""
        rounds = self.scenario.federation.rounds
        self.federation_history = self._series(self.parent_id, "global_accuracy", last)
        seconds = self._series(self.parent_id, "round_seconds", last)
        self.history = {
            silo: {
                key: self._series(run_id, key, last)
                for key in ("local_accuracy", "global_accuracy", "answered")
            }
            for silo, run_id in self.silo_runs.items()
        }
        return [
            RoundRecord(
                r,
                rounds,
                self.federation_history[r],
                silo_local={
                    s: h["local_accuracy"].get(r) for s, h in self.history.items() if r in h["local_accuracy"]
                },
                silo_global={
                    s: h["global_accuracy"][r] for s, h in self.history.items() if r in h["global_accuracy"]
                },
                seconds=seconds.get(r, 0.0),
                missing=[s for s, h in self.history.items() if h["answered"].get(r) == 0.0],
            )
            for r in range(last + 1)
        ]

    def artifact_uri(self, folder: str) -> str:
        """A folder in the job's run artifacts (served by the tracking server when it has one)."""
        return f"{self.client.get_run(self.parent_id).info.artifact_uri.rstrip('/')}/{folder}"

    def log_data(self, summary: DataSummary) -> None:
        """Record a silo's data as an MLflow dataset input: label counts only, never rows."""
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
                table,
                name=f"{self.scenario.name}/{summary.silo}",
                targets="label",
                digest=summary.version[:16] or None,  # the data version: a digest of the rows
            )
            entity = DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])
        self.client.log_inputs(self.silo_runs[summary.silo], datasets=[entity])
        self.client.log_batch(
            self.silo_runs[summary.silo],
            params=[
                Param("num_train", str(sum(summary.train_counts.values()))),
                Param("num_test", str(sum(summary.test_counts.values()))),
                Param("data_version", summary.version[:16]),
            ],
        )

    def log_global_model(
        self, round_index: int, weights_path: str, meta: dict, extra_files: dict[str, str] | None = None
    ) -> str:
        """Log the round's global model as a LoggedModel (step = round); return its model_id.

        `extra_files` (name: path) go into the model's folder too: the strategy's state of that
        round, so a job can go on from any logged round."""
        model = self.client.create_logged_model(
            self.experiment_id,
            name=f"{self.scenario.name}-global",
            source_run_id=self.parent_id,
            tags={"fedsilo.round": str(round_index), "fedsilo.job": self.job_name},
            model_type="fedsilo-global",
        )
        with tempfile.TemporaryDirectory() as folder:
            meta_path = Path(folder, "meta.json")
            meta_path.write_text(json.dumps(meta))
            local = Path(folder, "model")
            # MLflow notes that an Any input is not validated; it resets the warning filters itself,
            # so the notes are recorded here and dropped rather than filtered.
            with warnings.catch_warnings(record=True):
                mlflow.pyfunc.save_model(
                    local,
                    python_model=str(Path(__file__).with_name("mlflow_model.py")),
                    artifacts={"weights": weights_path, "meta": str(meta_path)},
                    pip_requirements=serving_requirements(),
                    code_paths=[str(PACKAGE_ROOT / "fedsilo"), str(PACKAGE_ROOT / "models")],
                    mlflow_model=mlflow.models.Model(model_id=model.model_id, run_id=self.parent_id),
                )
            for name, path in (extra_files or {}).items():
                shutil.copyfile(path, local / name)
            self.client.log_model_artifacts(model.model_id, str(local))
        self.client.log_outputs(self.parent_id, [LoggedModelOutput(model.model_id, step=round_index)])
        self.client.finalize_logged_model(model.model_id, "READY")
        return model.model_id

    def log_round(
        self,
        round_index: int,
        federation: dict[str, float],
        silos: dict[str, dict[str, float]],
        model_id: str | None = None,
    ) -> None:
        """One log_batch per run: each silo's metrics, then the parent's (linked to the model).

        The parent's come last: a round whose `global_accuracy` is on the parent run is recorded
        whole, which is what resuming an interrupted job relies on."""
        for silo, values in silos.items():
            self.client.log_batch(self.silo_runs[silo], metrics=_metrics(values, round_index))
            for key, value in values.items():
                self.history.setdefault(silo, {}).setdefault(key, {})[round_index] = value
        self.client.log_batch(self.parent_id, metrics=_metrics(federation, round_index, model_id))
        if "global_accuracy" in federation:
            self.federation_history[round_index] = federation["global_accuracy"]
        figure = accuracy_by_round(self.federation_history, self.history)
        self.client.log_figure(self.parent_id, figure, "plots/accuracy_by_round.png")
        plt.close(figure)

    def log_silo_matrix(self, matrix: pd.DataFrame, metric: str) -> None:
        """The silo x silo evaluation as a table (`silo_matrix.json`) and a heatmap on the parent run."""
        self.client.log_table(self.parent_id, matrix.reset_index(), MATRIX_TABLE)
        figure = silo_matrix_heatmap(matrix, metric)
        self.client.log_figure(self.parent_id, figure, "plots/silo_matrix.png")
        plt.close(figure)

    def set_tags(self, tags: dict[str, str], silo: str | None = None) -> None:
        run_id = self.silo_runs[silo] if silo else self.parent_id
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def champion(self) -> tuple[str, str] | None:
        """(version, model URI) of the registered model's champion, or None when the registry says
        there is none. Any other failure (a timeout, a refused connection, a server error) raises
        LookupError: an unreachable registry never counts as "no champion"."""
        name = self.scenario.registered_model_name
        try:
            version = self.client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException as exc:
            if _says_not_found(exc):
                return None
            raise LookupError(
                f"the registry could not say which version of {name} is champion ({exc})"
            ) from exc
        except Exception as exc:  # e.g. a requests error the client did not wrap
            raise LookupError(
                f"the registry could not say which version of {name} is champion ({exc})"
            ) from exc
        return version.version, version.source

    def champion_weights(self, adapter: bool = False) -> tuple[str, str] | None:
        """(version, local weights file) of the champion, or None; raises when it cannot be read.
        With `adapter`, the LoRA adapters logged with it when it has them (what a LoRA job starts
        from), else its weights."""
        registered = self.champion()
        if registered is None:
            return None
        version, model_uri = registered
        try:
            weights, _, adapters = logged_model_files(model_uri)
            return version, (adapters or weights) if adapter else weights
        except Exception as exc:  # artifact store unreachable, files missing
            raise LookupError(f"champion v{version} could not be read ({exc})") from exc

    def register(self, model_id: str, make_champion: bool, reason: str) -> str:
        """Register the final global model; move `champion` to it when it earned it."""
        name = self.scenario.registered_model_name
        try:
            self.client.create_registered_model(
                name, description=f"Global model of scenario {self.scenario.name}"
            )
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        version = self.client.create_model_version(
            name,
            f"models:/{model_id}",
            run_id=self.parent_id,
            model_id=model_id,
            tags={"fedsilo.job": self.job_name},
            description=reason,
        )
        if make_champion:
            self.client.set_registered_model_alias(name, CHAMPION, version.version)
        self.set_tags(
            {
                "fedsilo.registered_version": version.version,
                "fedsilo.champion": str(make_champion),
                "fedsilo.champion_reason": reason,
            }
        )
        return str(version.version)

    def finish(self, status: str = "FINISHED") -> None:
        for run_id in [*self.silo_runs.values(), self.parent_id]:
            if run_id:
                self.client.set_terminated(run_id, status)

    def run_url(self) -> str:
        return f"experiment {self.experiment_id}, run {self.parent_id}"


def code_commit() -> str | None:
    """The commit of the running code: FEDSILO_GIT_COMMIT (set in images at build time), else the
    git checkout fedsilo is imported from, else None."""
    if os.environ.get("FEDSILO_GIT_COMMIT"):
        return os.environ["FEDSILO_GIT_COMMIT"]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def scenario_yaml(scenario: Scenario) -> str:
    """The resolved scenario as YAML, loadable again by `fedsilo run`."""
    header = "# The resolved scenario of an MLflow-recorded job. Rerun: fedsilo run THIS_FILE\n"
    return header + yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)


def recorded_scenario(run_id: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(job name, scenario YAML text) of a recorded job's parent run."""
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
        with tempfile.TemporaryDirectory() as folder:
            text = Path(client.download_artifacts(run_id, SCENARIO_FILE, folder)).read_text()
    except (MlflowException, OSError) as exc:
        raise LookupError(
            f"MLflow run {run_id} at {client.tracking_uri} holds no recorded {SCENARIO_FILE} ({exc}); "
            "name the parent run of a fedsilo job"
        ) from None
    return run.data.tags.get("fedsilo.job", run.info.run_name), text


def latest_job_run(client: MlflowClient, experiment: str, job: str):
    """The parent run of the latest job named `job` in `experiment`; LookupError when none."""
    found = client.get_experiment_by_name(experiment)
    runs = (
        client.search_runs(
            [found.experiment_id],
            f"tags.`fedsilo.job` = '{job}' and tags.`{ROLE}` = 'federation'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found
        else []
    )
    if not runs:
        raise LookupError(
            f"no job named {job!r} in MLflow experiment {experiment!r} at {client.tracking_uri}"
        )
    return runs[0]


def job_scenario(experiment: str, job: str, tracking_uri: str | None = None) -> str:
    """The scenario YAML recorded by the latest job named `job` in `experiment`."""
    run = latest_job_run(MlflowClient(tracking_uri), experiment, job)
    return recorded_scenario(run.info.run_id, tracking_uri)[1]


def _says_not_found(exc: MlflowException) -> bool:
    """No such registered model, or no such alias (MLflow reports the latter as a bad parameter)."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    text = str(exc).lower()
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def logged_model_files(model_uri: str) -> tuple[str, str | None, str | None]:
    """Local paths of a logged global model's weights, of the strategy state saved with it and of
    its LoRA adapters (None when there are none); model URI: models:/<model_id>."""
    files = sorted(Path(download_model(model_uri)).rglob("*.safetensors"))
    weights = [f for f in files if f.name not in (STRATEGY_STATE, ADAPTER)]
    if not weights:
        raise LookupError(f"{model_uri} holds no weights file")
    state = next((str(f) for f in files if f.name == STRATEGY_STATE), None)
    adapter = next((str(f) for f in files if f.name == ADAPTER), None)
    return str(weights[0]), state, adapter


def model_weights_path(model_uri: str) -> str:
    """Local path of a logged global model's weights file (model URI: models:/<model_id>)."""
    return logged_model_files(model_uri)[0]


def _latest_jobs(experiment: str, jobs: int, tracking_uri: str | None):
    """(client, experiment id, parent runs of the latest `jobs` federated jobs, newest first)."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}")
    parents = client.search_runs(
        [found.experiment_id],
        f"tags.`{ROLE}` = 'federation'",
        order_by=["attributes.start_time DESC"],
        max_results=jobs,
    )
    return client, found.experiment_id, parents


def metric_by_round(experiment: str, metric: str = "global_accuracy", tracking_uri: str | None = None):
    """The latest job's `metric` points (value, step, timestamp), in round order."""
    client, _, parents = _latest_jobs(experiment, 1, tracking_uri)
    if not parents:
        raise LookupError(f"experiment {experiment!r} has no federated job")
    return sorted(client.get_metric_history(parents[0].info.run_id, metric), key=lambda m: m.step)


def compare(experiment: str, jobs: int = 1, tracking_uri: str | None = None) -> pd.DataFrame:
    """Per-silo table for the latest `jobs` federated jobs of an experiment, read back from MLflow."""
    client, experiment_id, parents = _latest_jobs(experiment, jobs, tracking_uri)
    rows = []
    for parent in parents:
        children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        job = parent.data.tags.get("fedsilo.job", parent.info.run_name)
        for child in sorted(children, key=lambda r: r.data.tags.get(SILO, "")):
            m = child.data.metrics
            rows.append(
                {
                    "job": job,
                    "silo": child.data.tags.get(SILO),
                    "num_examples": m.get("num_examples"),
                    "local_accuracy": m.get("local_accuracy"),
                    "global_accuracy": m.get("global_accuracy"),
                    "train_loss": m.get("train_loss"),
                }
            )
        m = parent.data.metrics
        rows.append(
            {
                "job": job,
                "silo": "(all silos)",
                "num_examples": None,
                "local_accuracy": None,
                "global_accuracy": m.get("global_accuracy"),
                "train_loss": None,
            }
        )
    return pd.DataFrame(rows)


def silo_matrices(experiment: str, jobs: int = 1, tracking_uri: str | None = None) -> dict[str, pd.DataFrame]:
    """The silo x silo matrix of each of the latest `jobs` jobs that logged one, by job and run."""
    client, _, parents = _latest_jobs(experiment, jobs, tracking_uri)
    matrices = {}
    for parent in parents:
        if MATRIX_TABLE not in [a.path for a in client.list_artifacts(parent.info.run_id)]:
            continue
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(parent.info.run_id, MATRIX_TABLE, folder)
            table = json.loads(Path(path).read_text())
        frame = pd.DataFrame(table["data"], columns=table["columns"]).set_index("model")
        job = parent.data.tags.get("fedsilo.job", parent.info.run_name)
        matrices[f"{job} (run {parent.info.run_id[:8]})"] = frame  # job names may repeat
    return matrices


def log_pretrained(weights: Path, metrics: dict[str, float], params: dict[str, object]) -> str:
    """Log a pretrained CNN checkpoint to experiment `fedsilo-pretrain`; return its model URI."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("fedsilo-pretrain")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("fedsilo-pretrain")
    run = client.create_run(experiment_id, run_name="cnn-digits", tags={ROLE: "pretrain"})
    run_id = run.info.run_id
    client.log_batch(
        run_id, metrics=_metrics(metrics, 0), params=[Param(k, str(v)) for k, v in params.items()]
    )
    model = client.create_logged_model(
        experiment_id, name="cnn-digits", source_run_id=run_id, model_type="fedsilo-pretrained"
    )
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "weights.safetensors").write_bytes(Path(weights).read_bytes())
        client.log_model_artifacts(model.model_id, folder)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    client.finalize_logged_model(model.model_id, "READY")
    client.set_terminated(run_id)
    return f"models:/{model.model_id}"
