"""Loading a pretrained checkpoint into a model whose head may differ."""

import torch


def load_matching_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor whose name and shape match; return the names left as initialised.

    This is transfer learning's usual rule: a backbone pretrained on another task keeps its
    weights, a classifier for a different number of classes starts fresh.
    """
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(
            "the pretrained checkpoint shares no tensor (by name and shape) with this model; "
            "check that model.kind and the input size match the checkpoint"
        )
    model.load_state_dict(matching, strict=False)
    return sorted(set(own) - set(matching))
