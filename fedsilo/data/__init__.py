"""Data sources, partitioners and the per-silo train/test split."""

from fedsilo.data.examples import Examples
from fedsilo.data.silo_data import SiloData, label_names, load_silo_data, order_labels
from fedsilo.errors import DataError

__all__ = ["DataError", "Examples", "SiloData", "label_names", "load_silo_data", "order_labels"]
