"""Loading a configured source into Examples: generated, CSV/Parquet, MedMNIST NPZ, Hugging Face.

`LOADERS` is the closed registry of source kinds (the scenario's `SOURCE_KINDS`, one loader each);
a kind outside it is an UnknownKind, never a guess.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsilo.data.examples import Examples, concat
from fedsilo.data.generators import generate
from fedsilo.errors import DataError, UnknownKind
from fedsilo.scenario import (
    SOURCE_KINDS,
    GeneratedSource,
    HuggingFaceSource,
    NpzSource,
    SourceSpec,
    TableSource,
)

FILE_KINDS = {".csv": "csv", ".parquet": "parquet", ".npz": "npz"}
"""The source kind of a silo's own data file, by its extension."""


def resolve_path(path: str) -> Path:
    """Expand ~ and $VARS; relative paths are taken from the current directory."""
    return Path(os.path.expandvars(os.path.expanduser(path)))


def source_for_file(path: str, shared: dict) -> dict:
    """A silo's own data file as a source spec, chosen by its extension (.csv, .parquet, .npz).

    Table column names follow `shared` (the scenario's data.source) when that is a table too.
    """
    kind = FILE_KINDS.get(Path(path).suffix.lower())
    if kind is None:
        raise DataError(f"{path}: a silo's data file must end in {', '.join(FILE_KINDS)}")
    spec = {"kind": kind, "path": path}
    if _is_table(kind) and _is_table(shared.get("kind")):
        spec |= {"text_column": shared["text_column"], "label_column": shared["label_column"]}
    return spec


def _is_table(kind: object) -> bool:
    return isinstance(kind, str) and SOURCE_KINDS.get(kind) is TableSource


def _read_table(path: Path, source: TableSource) -> pd.DataFrame:
    """The file as a table; empty, undecodable or malformed files are a DataError saying what to do."""
    try:
        if source.kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, encoding=source.encoding)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path} is empty: a CSV with a header row and one row per example is expected"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid {source.encoding} (byte {exc.start}: {exc.reason}); set "
            "data.source.encoding to the file's encoding, e.g. latin-1 or cp1252"
        ) from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise DataError(f"{path} could not be read as {source.kind}: {exc}") from None
    if frame.empty:
        raise DataError(f"{path} has a header but no rows")
    return frame


def load_table(source: TableSource, group_column: str | None = None) -> Examples:
    """Rows of a CSV or Parquet file; the text and label columns must exist and be non-empty."""
    path = resolve_path(source.path)
    if not path.is_file():
        raise DataError(f"{source.kind} file not found: {path} (data.source.path)")
    frame = _read_table(path, source)
    wanted = [source.text_column, source.label_column] + ([group_column] if group_column else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: column(s) {', '.join(map(repr, missing))} not found; the file has "
            f"{', '.join(map(repr, frame.columns))}. Set text_column/label_column in the scenario."
        )
    frame = frame.dropna(subset=[source.text_column, source.label_column])
    groups = frame[group_column].astype(str).to_numpy() if group_column else None
    return Examples(
        frame[source.text_column].astype(str).tolist(),
        frame[source.label_column].astype(str).to_numpy(),
        groups,
    )


def _download_medmnist(flag: str, path: Path) -> None:
    try:
        import medmnist
    except ImportError:
        raise DataError(
            f"{path} is missing and the medmnist package is not installed. Put the NPZ file at "
            f"{path} (PneumoniaMNIST ships in ../shared/data/pneumoniamnist/), or "
            "`pip install medmnist` on a machine with internet."
        ) from None
    info = medmnist.INFO[flag]
    dataset_class = getattr(medmnist, info["python_class"])
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset_class(split="train", download=True, root=str(path.parent))
    downloaded = path.parent / f"{flag}.npz"
    if downloaded != path:
        downloaded.rename(path)


def load_npz(source: NpzSource) -> Examples:
    """All splits of a MedMNIST-layout NPZ as N x C x H x W uint8 images with string labels."""
    path = resolve_path(source.path)
    if not path.is_file():
        if not source.download:
            raise DataError(
                f"image file not found: {path}. Put a MedMNIST NPZ there (PneumoniaMNIST ships in "
                "../shared/data/pneumoniamnist/pneumoniamnist.npz), point data.source.path at it, "
                "or set data.source.download to the MedMNIST flag on a machine with internet."
            )
        _download_medmnist(source.download, path)
    arrays = np.load(path)
    parts = []
    for split in ("train", "val", "test"):
        if f"{split}_images" not in arrays:
            continue
        images = arrays[f"{split}_images"]
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        labels = arrays[f"{split}_labels"].reshape(len(images), -1)[:, 0].astype(str)
        parts.append(Examples(images.astype(np.uint8), labels))
    if not parts:
        raise DataError(f"{path}: no train_images/train_labels arrays (MedMNIST layout expected)")
    return concat(parts)


def load_huggingface(source: HuggingFaceSource, group_column: str | None = None) -> Examples:
    """A Hugging Face dataset split; needs internet and the `datasets` package."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.source.kind 'huggingface' needs the datasets package: pip install datasets"
        ) from None
    frame = datasets.load_dataset(source.dataset, source.config, split=source.split).to_pandas()
    wanted = [source.text_column, source.label_column] + ([group_column] if group_column else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{source.dataset}: column(s) {missing} not found; it has {list(frame.columns)}")
    groups = frame[group_column].astype(str).to_numpy() if group_column else None
    return Examples(
        frame[source.text_column].astype(str).tolist(),
        frame[source.label_column].astype(str).to_numpy(),
        groups,
    )


@dataclass(frozen=True)
class Wanted:
    """What a loader is asked for besides its source: the scenario's domain, its silos and seed
    (for generated data) and the column that names each row's silo (natural partitions)."""

    domain: str
    silos: list[str]
    seed: int
    group_column: str | None = None


def _generated(source: GeneratedSource, wanted: Wanted) -> Examples:
    frame = generate(
        wanted.domain, wanted.silos, source.rows_per_silo, wanted.seed, source.label_noise, source.label_skew
    )
    return Examples(frame["text"].tolist(), frame["label"].to_numpy(), frame["silo"].to_numpy())


LOADERS: dict[str, Callable[[SourceSpec, Wanted], Examples]] = {
    "generated": _generated,
    "csv": lambda source, wanted: load_table(source, wanted.group_column),
    "parquet": lambda source, wanted: load_table(source, wanted.group_column),
    "npz": lambda source, wanted: load_npz(source),
    "huggingface": lambda source, wanted: load_huggingface(source, wanted.group_column),
}


def load_source(
    source: SourceSpec, domain: str, silos: list[str], seed: int, group_column: str | None = None
) -> Examples:
    """Load any configured source. Generated data carries its silo in `groups`."""
    kind = getattr(source, "kind", None)
    loader = LOADERS.get(kind) if isinstance(kind, str) else None
    if loader is None:
        raise UnknownKind("data source kind", kind, list(LOADERS))
    return loader(source, Wanted(domain, silos, seed, group_column))
