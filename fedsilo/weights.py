"""Weights as safetensors bytes at a URI, with a sha256 checksum the receiver verifies.

Tasks exchange WeightRef records (URI + checksum), never tensors, so the same code works when
the store is a local folder (embedded) or a shared artifact store (distributed).
"""

import hashlib
import tempfile
from pathlib import Path

import fsspec
import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from fedsilo import artifacts
from fedsilo.messages import WeightRef

State = dict[str, torch.Tensor]


class ChecksumError(Exception):
    """The weights read back are not the ones that were written."""


def to_bytes(state: State) -> bytes:
    """Serialise a state dict; tensors sharing memory are copied so safetensors accepts them."""
    return save_bytes({name: t.detach().cpu().contiguous().clone() for name, t in state.items()})


def _publish(payload: bytes, uri: str) -> WeightRef:
    artifacts.write_bytes(uri, payload)
    return WeightRef(uri, hashlib.sha256(payload).hexdigest(), len(payload))


def write_state(state: State, uri: str) -> WeightRef:
    """Write weights to the shared store (a folder, s3://, mlflow-artifacts:/) and return their reference."""
    return _publish(to_bytes(state), uri)


def copy_file(path: str | Path, uri: str) -> WeightRef:
    """Publish a safetensors file (e.g. a registered model's weights) at `uri` in the shared store."""
    return _publish(Path(path).read_bytes(), uri)


def local_path(ref: WeightRef, scratch: str | Path | None = None) -> str:
    """A filesystem path holding the weights: the file itself when local, else a verified download."""
    if not ref.uri.startswith(artifacts.MLFLOW_SCHEMES):
        fs, path = fsspec.core.url_to_fs(ref.uri)
        if "file" in fs.protocol:
            return path
    target = Path(scratch or tempfile.mkdtemp(prefix="fedsilo-")) / Path(ref.uri).name
    target.write_bytes(_verified(ref))
    return str(target)


def _verified(ref: WeightRef) -> bytes:
    payload = artifacts.read_bytes(ref.uri)
    digest = hashlib.sha256(payload).hexdigest()
    if digest != ref.sha256:
        raise ChecksumError(
            f"weights at {ref.uri} have sha256 {digest[:12]}..., expected {ref.sha256[:12]}...; "
            "the file was changed or truncated in transit"
        )
    return payload


def read_state(ref: WeightRef) -> State:
    """Read weights and verify their checksum; a mismatch raises ChecksumError naming the URI."""
    return load_bytes(_verified(ref))


def delete_state(ref: WeightRef) -> None:
    """Remove weights that are no longer needed (a consumed silo update, an old global)."""
    artifacts.delete(ref.uri)


def file_dtypes(ref: WeightRef) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor names, safetensors dtypes ("F32", "I32") and shapes at `ref`, from the header alone
    for a local file (a remote one is downloaded and verified first)."""
    with tempfile.TemporaryDirectory() as scratch, safe_open(local_path(ref, scratch), "pt") as handle:
        return {
            name: (handle.get_slice(name).get_dtype(), tuple(handle.get_slice(name).get_shape()))
            for name in handle.keys()  # noqa: SIM118 (not a dict)
        }


def file_layout(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header alone."""
    with safe_open(str(path), "pt") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118 (not a dict)


def same_layout(path: str | Path, ref: WeightRef) -> bool:
    """Whether the weights file at `path` fits the model whose weights `ref` holds (same names, shapes)."""
    with tempfile.TemporaryDirectory() as scratch:  # only used when `ref` is not a local file
        return file_layout(path) == file_layout(local_path(ref, scratch))
