"""Bytes at a URI in the store that silos and coordinator share: any fsspec URL, or MLflow artifacts.

Embedded jobs use a local folder. Distributed jobs default to the job's own MLflow run artifacts
(`mlflow-artifacts:/...`, served by the tracking server) so that nothing but the Prefect and MLflow
servers has to be reachable from every silo; an S3/MinIO or shared-folder URL works the same way.
MLflow is imported only when such a URI is used, so the engine stays importable without it.
"""

import posixpath
import tempfile
from pathlib import Path

import fsspec

MLFLOW_SCHEMES = ("mlflow-artifacts:", "runs:", "models:", "http:", "https:")


def _is_mlflow(uri: str) -> bool:
    return uri.startswith(MLFLOW_SCHEMES)


def is_url(location: str) -> bool:
    """Whether `location` is a store URL (s3://, file://, mlflow-artifacts:/...) rather than a path."""
    return "://" in location or _is_mlflow(location)


def _mlflow_repository(folder_uri: str):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(folder_uri)


def read_bytes(uri: str) -> bytes:
    """The whole object at `uri`."""
    if not _is_mlflow(uri):
        with fsspec.open(uri, "rb") as handle:
            return handle.read()
    folder, name = posixpath.split(uri)
    with tempfile.TemporaryDirectory() as scratch:
        return Path(_mlflow_repository(folder).download_artifacts(name, scratch)).read_bytes()


def write_bytes(uri: str, payload: bytes) -> None:
    """Create or replace the object at `uri` (folders are created as needed)."""
    if not _is_mlflow(uri):
        with fsspec.open(uri, "wb", auto_mkdir=True) as handle:
            handle.write(payload)
        return
    folder, name = posixpath.split(uri)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch, name)
        local.write_bytes(payload)
        _mlflow_repository(folder).log_artifact(str(local))


def delete(uri: str) -> None:
    """Remove the object at `uri` if it exists."""
    if _is_mlflow(uri):
        folder, name = posixpath.split(uri)
        _mlflow_repository(folder).delete_artifacts(name)
        return
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path)


def download_model(uri: str) -> str:
    """Download an MLflow model (models:/, runs:/) to a local folder and return its path."""
    import mlflow

    return mlflow.artifacts.download_artifacts(artifact_uri=uri)
