from typing import get_args

import pytest
import torch

from fedsilo.errors import UnknownKind
from fedsilo.modeling import BUILDERS, build_model, tokenizer_for
from fedsilo.scenario import ModelSpec
from models import PACKAGED_MINILM, build_bert, build_cnn, load_matching_weights, load_tokenizer


@pytest.mark.parametrize("size,channels", [(28, 1), (64, 3)])
def test_cnn_is_the_founding_network_for_any_input(size, channels):
    model = build_cnn(channels, size, num_classes=4)
    assert model.features[0].out_channels == 20 and model.features[3].out_channels == 50
    assert model.features[0].kernel_size == (5, 5) and model.hidden[1].out_features == 500
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 4)


def test_same_seed_same_weights():
    a, b = build_cnn(1, 28, 2, seed=4), build_cnn(1, 28, 2, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pretrained_backbone_loads_and_a_new_head_is_reported():
    pretrained = build_cnn(1, 28, 10, seed=1).state_dict()
    model = build_cnn(1, 28, 2, seed=2)
    fresh = load_matching_weights(model, pretrained)
    assert fresh == ["classifier.bias", "classifier.weight"]
    assert torch.equal(model.features[0].weight, pretrained["features.0.weight"])
    with pytest.raises(ValueError, match="shares no tensor"):
        load_matching_weights(model, {"other": torch.zeros(1)})


def test_tiny_random_bert_for_tests():
    model = build_bert("tiny-random", num_labels=3)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_model_kinds_are_a_closed_registry_and_an_unknown_one_is_named():
    assert set(BUILDERS) == set(get_args(ModelSpec.model_fields["kind"].annotation))
    gpt = ModelSpec.model_construct(kind="gpt", source="random", lora=None)  # past the schema
    with pytest.raises(UnknownKind, match="unknown model kind 'gpt'; accepted: bert, cnn"):
        build_model(gpt, 2, (1, 28, 28), seed=0)


def test_whether_a_model_reads_images_is_said_by_its_spec():
    cnn, bert = ModelSpec(kind="cnn", source="random"), ModelSpec(kind="bert", source="tiny-random")
    assert cnn.takes_images and not bert.takes_images
    assert tokenizer_for(cnn) is None
    assert build_model(cnn, 3, (1, 28, 28), seed=0)(torch.zeros(1, 1, 28, 28)).shape == (1, 3)


@pytest.mark.slow
def test_packaged_minilm_loads_offline_and_classifies():
    tokenizer = load_tokenizer(PACKAGED_MINILM)
    model = build_bert(PACKAGED_MINILM, num_labels=5)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    batch = tokenizer(["chest pain radiating to the left arm"], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 5)
