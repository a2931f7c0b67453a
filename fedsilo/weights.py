"""Weights as safetensors bytes at a URI, with a sha256 checksum the receiver verifies.

Tasks exchange WeightRef records (URI + checksum), never tensors, so the same code works when
the store is a local folder, a shared artifact store (distributed) or this process's memory.

`memory://` URIs (embedded mode's default exchange) hold a snapshot of the tensors in this
process: no serialisation, no hashing, no file. Nothing crosses a process boundary there, so a
checksum would verify nothing; what MLflow logs is still written as a file.
"""

import hashlib
import json
import tempfile
from pathlib import Path

import fsspec
import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from fedsilo import artifacts
from fedsilo.errors import ChecksumError
from fedsilo.messages import WeightRef

State = dict[str, torch.Tensor]
MEMORY = "memory://"
_in_memory: dict[str, State] = {}  # memory:// URI -> snapshot; readers must not modify it
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def in_memory_uris(prefix: str = "") -> list[str]:
    """The `memory://` weights this process holds under `prefix` (what a finished job must not leave)."""
    return [uri for uri in _in_memory if uri.startswith(prefix)]


_RECENTLY_WRITTEN = 2  # weights this process wrote to a remote store, kept to read back locally
_written: dict[str, tuple[str, bytes]] = {}  # uri -> (sha256, payload), oldest first


def in_memory(uri: str) -> bool:
    return uri.startswith(MEMORY)


def to_bytes(state: State) -> bytes:
    """Serialise a state dict; tensors sharing memory are copied so safetensors accepts them."""
    return save_bytes({name: t.detach().cpu().contiguous().clone() for name, t in state.items()})


def _publish(payload: bytes, uri: str) -> WeightRef:
    artifacts.write_bytes(uri, payload)
    ref = WeightRef(uri, hashlib.sha256(payload).hexdigest(), len(payload))
    if artifacts.is_url(uri) and not uri.startswith("file:"):  # the coordinator reads its own
        _written.pop(uri, None)  # uploads back (the next round's global): keep the last few here
        _written[uri] = (ref.sha256, payload)
        while len(_written) > _RECENTLY_WRITTEN:
            _written.pop(next(iter(_written)))
    return ref


def write_state(state: State, uri: str) -> WeightRef:
    """Write weights to the shared store (a folder, s3://, mlflow-artifacts:/, memory://) and
    return their reference."""
    if in_memory(uri):
        snapshot = {name: t.detach().to("cpu", copy=True) for name, t in state.items()}
        _in_memory[uri] = snapshot
        return WeightRef(uri, "", sum(t.numel() * t.element_size() for t in snapshot.values()))
    return _publish(to_bytes(state), uri)


def copy_file(path: str | Path, uri: str) -> WeightRef:
    """Publish a safetensors file (e.g. a registered model's weights) at `uri` in the shared store."""
    if in_memory(uri):
        return write_state(load_bytes(Path(path).read_bytes()), uri)
    return _publish(Path(path).read_bytes(), uri)


def local_path(ref: WeightRef, scratch: str | Path | None = None) -> str:
    """A filesystem path holding the weights: the file itself when local, else a verified download
    (weights in memory are written out)."""
    if in_memory(ref.uri):
        target = Path(scratch or tempfile.mkdtemp(prefix="fedsilo-")) / Path(ref.uri).name
        target.write_bytes(to_bytes(read_state(ref)))
        return str(target)
    if not ref.uri.startswith(artifacts.MLFLOW_SCHEMES):
        fs, path = fsspec.core.url_to_fs(ref.uri)
        if "file" in fs.protocol:
            return path
    target = Path(scratch or tempfile.mkdtemp(prefix="fedsilo-")) / Path(ref.uri).name
    target.write_bytes(_verified(ref))
    return str(target)


def _verified(ref: WeightRef) -> bytes:
    kept = _written.get(ref.uri)
    if kept is not None and kept[0] == ref.sha256:  # written by this process, not downloaded again
        return kept[1]
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
    if in_memory(ref.uri):
        try:
            return dict(_in_memory[ref.uri])
        except KeyError:
            raise FileNotFoundError(f"no weights at {ref.uri} in this process") from None
    return load_bytes(_verified(ref))


def delete_state(ref: WeightRef) -> None:
    """Remove weights that are no longer needed (a consumed silo update, an old global)."""
    delete_uri(ref.uri)


def delete_uri(uri: str) -> None:
    """Remove whatever is at `uri`, if anything (in memory or in the store)."""
    if in_memory(uri):
        _in_memory.pop(uri, None)
    else:
        _written.pop(uri, None)
        artifacts.delete(uri)


def file_dtypes(ref: WeightRef) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor names, safetensors dtypes ("F32", "I32") and shapes at `ref`, from the safetensors
    header alone: 8 bytes of length and a JSON header, read with two ranged reads where the store
    has them (a folder, s3://, gs://). MLflow's artifact store serves whole files only."""
    if in_memory(ref.uri):
        return {n: (_SAFETENSORS_DTYPES[t.dtype], tuple(t.shape)) for n, t in read_state(ref).items()}
    if ref.uri.startswith(artifacts.MLFLOW_SCHEMES) or ref.uri in _written:
        header = _header_of(_verified(ref))
    else:
        with fsspec.open(ref.uri, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if length > ref.size:  # not a safetensors file; reading on would fetch anything
                raise ValueError(f"{ref.uri} is not a safetensors file")
            header = json.loads(handle.read(length))
    return {
        name: (entry["dtype"], tuple(entry["shape"]))
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _header_of(payload: bytes) -> dict:
    length = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8 : 8 + length])


def file_layout(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header alone."""
    with safe_open(str(path), "pt") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118 (not a dict)


def same_layout(path: str | Path, ref: WeightRef) -> bool:
    """Whether the weights file at `path` fits the model whose weights `ref` holds (same names,
    shapes), from both headers."""
    return file_layout(path) == {name: shape for name, (_, shape) in file_dtypes(ref).items()}
