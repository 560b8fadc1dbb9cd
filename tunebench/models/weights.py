"""A fully fine-tuned model's weights as one safetensors file (``training.method: full``).

The folder holds ``model.safetensors``: every parameter of the causal LM by its transformers
name (a tied output head once, under the input embedding's name), in float32, the training
master copy. Loading copies them into a model built from the config's base (its presets,
dtype, attention and device rules), so a full run predicts, serves and exports through the same
loading code as a LoRA run; the copy casts to the model's dtype (bf16 on a GPU).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunebench.errors import TunebenchError

WEIGHTS_FILE = "model.safetensors"


def is_full_model(folder: Path) -> bool:
    """Whether ``folder`` holds full-model weights as :func:`save_weights` writes them."""
    return (folder / WEIGHTS_FILE).is_file()


def save_weights(state: dict[str, torch.Tensor], folder: Path) -> None:
    """Write ``state`` (name -> full tensor, on CPU) as ``folder/model.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def load_weights(model: nn.Module, folder: Path) -> None:
    """Copy ``folder``'s weights into ``model`` in place (cast to each parameter's dtype); a
    missing, extra or differently shaped weight is a one-line error naming the first one."""
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise TunebenchError(f"{folder}: no {WEIGHTS_FILE}; run `tunebench train` with training.method full")
    saved = load_file(str(path))
    params = dict(model.named_parameters())  # tied weights once, as they were saved
    base = getattr(model.config, "_name_or_path", "the base model")
    missing = sorted(set(params) - set(saved))
    extra = sorted(set(saved) - set(params))
    shape = [n for n in params if n in saved and tuple(saved[n].shape) != tuple(params[n].shape)]
    problem = (
        f"{len(missing)} weights missing (first: {missing[0]})"
        if missing
        else f"{len(extra)} unknown weights (first: {extra[0]})"
        if extra
        else f"{shape[0]} has shape {tuple(saved[shape[0]].shape)}, the model {tuple(params[shape[0]].shape)}"
        if shape
        else None
    )
    if problem:
        raise TunebenchError(f"{path}: does not fit base model {base} (trained on another model?): {problem}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])
