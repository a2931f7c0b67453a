"""A silo's encoded update and private key between its fit and its masking step, on its own disk.

Under secure aggregation nothing plain leaves the silo, so what the masking step needs stays in
the silo's private folder (FEDSILO_SILO_STATE, default .fedsilo/silo-state; mode 0700): one file
per silo and job, overwritten each round. In distributed mode each step may be a new process, so
memory would not do.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedsilo import names
from fedsilo.errors import StepFailed

STATE_ENV = "FEDSILO_SILO_STATE"


def _path(silo: str, update_uri: str) -> Path:
    job_root = update_uri.rsplit("/", 2)[0]  # <root>/round-NNN/<silo>.safetensors
    folder = Path(os.environ.get(STATE_ENV, ".fedsilo/silo-state"), names.file_name(silo))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / f"{hashlib.sha256(job_root.encode()).hexdigest()[:24]}.safetensors"


def keep(silo: str, update_uri: str, vector: np.ndarray, private_key: bytes) -> None:
    path = _path(silo, update_uri)
    tensors = {
        "vector": torch.from_numpy(vector.view(np.int32)),
        "private_key": torch.frombuffer(bytearray(private_key), dtype=torch.uint8),
    }
    save_file(tensors, str(path), metadata={"update_uri": update_uri})
    path.chmod(0o600)


def load(silo: str, update_uri: str) -> tuple[np.ndarray, bytes]:
    """The vector and key kept for `update_uri`; an error naming the silo when there are none."""
    path = _path(silo, update_uri)
    try:
        with safe_open(str(path), "pt") as handle:
            kept_for = handle.metadata().get("update_uri")
        tensors = load_file(str(path))
    except (FileNotFoundError, OSError) as exc:
        raise StepFailed(f"silo {silo}: no update kept for {update_uri} ({exc})") from None
    if kept_for != update_uri:
        raise StepFailed(f"silo {silo}: the update kept is for {kept_for}, not {update_uri}")
    return tensors["vector"].numpy().view(np.uint32), bytes(tensors["private_key"].numpy())
