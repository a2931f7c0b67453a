"""Weights as safetensors bytes at a URI, with a sha256 checksum the receiver verifies.

Tasks exchange WeightRef records (URI + checksum), never tensors, so the same code works when
the store is a local folder (embedded) or a shared artifact store (distributed).
"""

import hashlib
from dataclasses import dataclass

import fsspec
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

State = dict[str, torch.Tensor]


class ChecksumError(Exception):
    """The weights read back are not the ones that were written."""


@dataclass(frozen=True)
class WeightRef:
    uri: str
    sha256: str
    size: int


def to_bytes(state: State) -> bytes:
    """Serialise a state dict; tensors sharing memory are copied so safetensors accepts them."""
    return save_bytes({name: t.detach().cpu().contiguous().clone() for name, t in state.items()})


def write_state(state: State, uri: str) -> WeightRef:
    """Write weights to any fsspec URL (folder, file://, s3://) and return their reference."""
    payload = to_bytes(state)
    with fsspec.open(uri, "wb", auto_mkdir=True) as handle:
        handle.write(payload)
    return WeightRef(uri, hashlib.sha256(payload).hexdigest(), len(payload))


def ref_for(uri: str) -> WeightRef:
    """Reference weights already written by someone else (e.g. a registered model's file)."""
    with fsspec.open(uri, "rb") as handle:
        payload = handle.read()
    return WeightRef(uri, hashlib.sha256(payload).hexdigest(), len(payload))


def local_path(ref: WeightRef) -> str:
    """The filesystem path of weights in a local store (what MLflow's artifact logging takes)."""
    fs, path = fsspec.core.url_to_fs(ref.uri)
    if "file" not in fs.protocol:
        raise ValueError(f"{ref.uri} is not on the local filesystem")
    return path


def read_state(ref: WeightRef) -> State:
    """Read weights and verify their checksum; a mismatch raises ChecksumError naming the URI."""
    with fsspec.open(ref.uri, "rb") as handle:
        payload = handle.read()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != ref.sha256:
        raise ChecksumError(
            f"weights at {ref.uri} have sha256 {digest[:12]}..., expected {ref.sha256[:12]}...; "
            "the file was changed or truncated in transit"
        )
    return load_bytes(payload)


def delete_state(ref: WeightRef) -> None:
    """Remove weights that are no longer needed (a consumed silo update, an old global)."""
    fs, path = fsspec.core.url_to_fs(ref.uri)
    if fs.exists(path):
        fs.rm(path)
