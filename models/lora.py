"""LoRA adapters through peft: the part of a BERT-family classifier silos train and exchange.

With adapters on, the pretrained encoder stays frozen; each silo trains low-rank matrices in the
attention layers (`target_modules`) and the classification head, and only those tensors (the
adapter state) cross between silos and coordinator. Merging folds the adapters into the encoder
weights, giving a plain model of the original architecture.
"""

import copy

import torch

State = dict[str, torch.Tensor]
# peft is imported where it is used: a job without adapters does not pay for its import.


def with_lora(model: torch.nn.Module, r: int, alpha: int, dropout: float, targets: list[str], seed: int):
    """`model` with fresh LoRA adapters (A seeded, B zero: the model's outputs are unchanged)."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets
    )
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    return getattr(model, "peft_config", None) is not None


def adapter_state(model) -> State:
    """The adapter matrices and the classification head: what a LoRA silo exchanges."""
    from peft.utils import get_peft_model_state_dict

    return {name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(model).items()}


def load_adapter(model, state: State) -> None:
    """Put an adapter state into the model; every adapter tensor must be there, nothing else."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    expected = set(get_peft_model_state_dict(model))
    if set(state) != expected:
        differ = sorted(set(state) ^ expected)[:3]
        raise ValueError(f"adapter state does not fit the model's adapters (differing: {differ})")
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter state has tensors the model lacks: {unexpected[:3]}")


def merged(model) -> torch.nn.Module:
    """A plain model with the adapters folded into its weights (the model is left as it was)."""
    return copy.deepcopy(model).merge_and_unload()
