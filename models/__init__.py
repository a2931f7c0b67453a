"""Model zoo: build the shared model from a spec and load its pretrained weights.

Depends only on torch and transformers, so every other layer can use it.
"""

from models.bert import PACKAGED_MINILM, TINY_RANDOM, build_bert, load_tokenizer
from models.cnn import LeNet, build_cnn
from models.weights import load_matching_weights

__all__ = [
    "PACKAGED_MINILM",
    "TINY_RANDOM",
    "LeNet",
    "build_bert",
    "build_cnn",
    "load_matching_weights",
    "load_tokenizer",
]
