"""A round's global model as an MLflow 3 LoggedModel: a pyfunc ("model from code",
fedsilo/mlflow_model.py) that loads and predicts without fedsilo installed, because fedsilo's
and the model zoo's code travel inside it. Also the pretrained CNN checkpoint, and reading a
logged model's files back."""

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Param

from fedsilo.artifacts import download_model
from fedsilo.errors import RegistryUnavailable
from fedsilo.names import registered_model_name
from fedsilo.records import ADAPTER
from fedsilo.tracking import names
from fedsilo.tracking.runs import JobRuns
from fedsilo.tracking.store import metrics, package_version, reading

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # fedsilo/ and models/ ship inside each logged model
MODEL_CODE = PACKAGE_ROOT / "fedsilo" / "mlflow_model.py"
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
    """The pip requirements of a logged global model, pinned to this environment's versions."""
    return [f"{name}=={package_version(name)}" for name in _SERVING_PACKAGES]


def log_global_model(
    runs: JobRuns, round_index: int, weights_path: str, meta: dict, extra_files: dict[str, str] | None
) -> str:
    """Log round `round_index`'s global model on the job's parent run (step = round); return its
    model_id. `extra_files` (name: local path) are copied into the model's folder."""
    client = runs.client
    model = client.create_logged_model(
        runs.experiment_id,
        name=registered_model_name(runs.scenario.name),
        source_run_id=runs.parent_id,
        tags={names.ROUND: str(round_index), names.JOB: runs.job},
        model_type=names.GLOBAL_MODEL_TYPE,
    )
    with tempfile.TemporaryDirectory() as folder:
        local = _save_pyfunc(Path(folder), weights_path, meta, model.model_id, runs.parent_id)
        for name, path in (extra_files or {}).items():
            shutil.copyfile(path, local / name)
        client.log_model_artifacts(model.model_id, str(local))
    client.log_outputs(runs.parent_id, [LoggedModelOutput(model.model_id, step=round_index)])
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def _save_pyfunc(folder: Path, weights_path: str, meta: dict, model_id: str, run_id: str) -> Path:
    """Write the pyfunc model (weights, meta.json, code, pinned requirements) under `folder`."""
    meta_path = folder / "meta.json"
    meta_path.write_text(json.dumps(meta))
    local = folder / "model"
    # MLflow notes that an Any input is not validated; it resets the warning filters itself,
    # so the notes are recorded here and dropped rather than filtered.
    with warnings.catch_warnings(record=True):
        mlflow.pyfunc.save_model(
            local,
            python_model=str(MODEL_CODE),
            artifacts={"weights": weights_path, "meta": str(meta_path)},
            pip_requirements=serving_requirements(),
            code_paths=[str(PACKAGE_ROOT / "fedsilo"), str(PACKAGE_ROOT / "models")],
            mlflow_model=mlflow.models.Model(model_id=model_id, run_id=run_id),
        )
    return local


def logged_model_files(model_uri: str) -> tuple[str, str | None, str | None]:
    """Local paths of a logged global model's weights, of the strategy state saved with it and of
    its LoRA adapters (None when there are none); model URI: models:/<model_id>.

    Raises RegistryUnavailable when the model cannot be downloaded or holds no weights file."""
    with reading(model_uri):
        files = sorted(Path(download_model(model_uri)).rglob("*.safetensors"))
    weights = [f for f in files if f.name not in (names.STRATEGY_STATE, ADAPTER)]
    if not weights:
        raise RegistryUnavailable(f"{model_uri} holds no weights file")
    state = next((str(f) for f in files if f.name == names.STRATEGY_STATE), None)
    adapter = next((str(f) for f in files if f.name == ADAPTER), None)
    return str(weights[0]), state, adapter


def model_weights_path(model_uri: str) -> str:
    """Local path of a logged global model's weights file (model URI: models:/<model_id>)."""
    return logged_model_files(model_uri)[0]


def log_pretrained(weights: Path, values: dict[str, float], params: dict[str, object]) -> str:
    """Log a pretrained CNN checkpoint to experiment `fedsilo-pretrain`; return its model URI."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("fedsilo-pretrain")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("fedsilo-pretrain")
    run = client.create_run(experiment_id, run_name="cnn-digits", tags={names.ROLE: names.PRETRAIN_ROLE})
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=metrics(values, 0), params=[Param(k, str(v)) for k, v in params.items()])
    model = client.create_logged_model(
        experiment_id, name="cnn-digits", source_run_id=run_id, model_type=names.PRETRAINED_MODEL_TYPE
    )
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "weights.safetensors").write_bytes(Path(weights).read_bytes())
        client.log_model_artifacts(model.model_id, folder)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    client.finalize_logged_model(model.model_id, "READY")
    client.set_terminated(run_id)
    return f"models:/{model.model_id}"
