"""What a silo keeps between the steps of one secure round, on its own disk: its encoded update,
its private keys and seed, the shares its peers sealed for it, and a record of what it has done.

Under secure aggregation nothing plain leaves the silo, so this stays in the silo's private folder
(FEDSILO_SILO_STATE, default .fedsilo/silo-state; mode 0700): one file per silo and job,
overwritten each round. In distributed mode each step may be a new process, so memory would not
do. The record (JSON) is what lets a silo answer each step once per round: the weight it encodes
with, the view it shared under, the peers it masked with, and the survivors it revealed shares for.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedsilo import names
from fedsilo.errors import StepFailed

STATE_ENV = "FEDSILO_SILO_STATE"


@dataclass
class Kept:
    """A silo's state for one round: its clipped change (float64), secrets by name, the JSON record."""

    vector: np.ndarray
    secrets: dict[str, bytes] = field(default_factory=dict)
    record: dict = field(default_factory=dict)


def state_folder(silo: str) -> Path:
    """The silo's private folder (FEDSILO_SILO_STATE, default .fedsilo/silo-state/<silo>, mode 0700,
    enforced also when it already exists): what it keeps and never sends."""
    folder = Path(os.environ.get(STATE_ENV, ".fedsilo/silo-state"), names.file_name(silo))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    return folder


def _path(silo: str, update_uri: str) -> Path:
    job_root = update_uri.rsplit("/", 2)[0]  # <root>/round-NNN/<silo>.safetensors
    return state_folder(silo) / f"{hashlib.sha256(job_root.encode()).hexdigest()[:24]}.safetensors"


def save(silo: str, update_uri: str, kept: Kept) -> None:
    """Keep `kept` for the round whose update would go to `update_uri` (replacing the last one)."""
    path = _path(silo, update_uri)
    tensors = {"vector": torch.from_numpy(np.ascontiguousarray(kept.vector, dtype=np.float64))}
    for name, secret in kept.secrets.items():
        tensors[f"secret/{name}"] = torch.frombuffer(bytearray(secret), dtype=torch.uint8)
    metadata = {"update_uri": update_uri, "record": json.dumps(kept.record)}
    temporary = path.with_suffix(".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    temporary.chmod(0o600)
    temporary.replace(path)


def load(silo: str, update_uri: str) -> Kept:
    """What was kept for `update_uri`; an error naming the silo when there is none."""
    path = _path(silo, update_uri)
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (FileNotFoundError, OSError) as exc:
        raise StepFailed(f"silo {silo}: no update kept for {update_uri} ({exc})") from None
    if metadata.get("update_uri") != update_uri:
        raise StepFailed(
            f"silo {silo}: the update kept is for {metadata.get('update_uri')}, not {update_uri}"
        )
    secrets = {
        name.removeprefix("secret/"): bytes(t.numpy()) for name, t in tensors.items() if name != "vector"
    }
    record = json.loads(metadata.get("record", "{}"))
    return Kept(tensors["vector"].numpy(), secrets, record)
