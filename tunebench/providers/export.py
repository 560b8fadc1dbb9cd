"""``tunebench export RUN_DIR``: the base model with the run's LoRA adapter merged in, or the
fully fine-tuned model itself (``training.method: full``: its trained weights over the base's
config and tokenizer).

The result is a plain transformers folder (``config.json``, safetensors weights, tokenizer,
``generation_config.json``) that anything serving Hugging Face models loads with no peft
(vLLM, TGI, llama.cpp's converter, or tunebench itself through ``model.name: DIR``). The merge
runs in float32 and is cast to the requested dtype afterwards, so a bf16 export rounds once
rather than at every LoRA addition. The generation config stops on the token the adapter was
trained to end with (see :func:`tunebench.models.training_eos_id`), so a server that honours it
stops where the fine-tune does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.io import write_json
from tunebench.rundir import RunDir

#: Written into every export; a folder without it is never replaced.
MARKER = "tunebench_export.json"


def export_merged(
    config: ExperimentConfig, run: RunDir, out: Path | None = None, dtype: str = "auto"
) -> Path:
    """Write base + adapter, merged (or the full fine-tune's weights), to ``out`` (default
    ``RUN/merged``) atomically; returns it.

    ``dtype``: ``auto`` keeps the dtype the model trains in on this machine (bfloat16 with CUDA,
    float32 without), or ``float32`` / ``bfloat16`` / ``float16``.
    """
    from tunebench.inference.local import apply_trained, require_adapter, require_trained
    from tunebench.models import id_list, load_model, training_eos_id

    method = config.training.method  # type: ignore[union-attr]  # the local provider's config
    trained = run.trained_dir(method)
    if method == "lora":  # before minutes of loading
        require_adapter(trained)
    else:
        require_trained(trained)
    target = (out or run.root / "merged").resolve()
    if target.exists() and not (target / MARKER).is_file():
        # only an earlier export is ever replaced: --out must not wipe an unrelated folder
        raise TunebenchError(f"{target}: exists and is not a tunebench export; choose another --out")
    final_dtype = _dtype(dtype)
    # An adapter trained over 8-/4-bit weights (QLoRA) merges into the unquantized base: the
    # quantized weights are an approximation of it, and a merged 8-/4-bit layer cannot be saved
    # as one plain weight anyway.
    base = config.model.model_copy(update={"dtype": "float32", "quantization": "none"})
    model, tokenizer = load_model(base, device="cpu")
    merged = apply_trained(model, trained, merge=True).to(final_dtype)
    eos = training_eos_id(tokenizer, merged.generation_config)
    stop = id_list(merged.generation_config.eos_token_id)
    if eos not in stop:
        merged.generation_config.eos_token_id = [eos, *stop] if stop else eos
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / MARKER, {"run": str(run.root.resolve()), method_key(method): str(trained.resolve())})
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    run.record_stage("export", path=str(target), dtype=str(final_dtype).removeprefix("torch."), bytes=size)
    return target


def method_key(method: str) -> str:
    """The export marker's key for what was exported (``adapter`` kept for LoRA runs)."""
    return "adapter" if method == "lora" else "model"


def _dtype(name: str) -> torch.dtype:
    """``--dtype``, with ``auto`` resolved as for training on this machine (models.resolve_dtype)."""
    from tunebench.models import resolve_dtype

    if name not in ("auto", "float32", "bfloat16", "float16"):
        raise TunebenchError(f"--dtype {name}: choose auto, float32, bfloat16 or float16")
    return resolve_dtype(name, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
