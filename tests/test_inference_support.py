"""Shared fixtures of the inference and serve tests (no tests here).

The session's tiny model (tests/tiny.py) is random with a small init, so greedy decoding emits
the same token forever, and a batched-vs-unbatched comparison of it could hardly fail.
``lively_model_dir`` re-draws its matrices with a larger spread (varied text) and enlarges the
embeddings of ``<|im_end|>`` and ``\\n`` (tied to the output layer), so generations end by EOS,
by newline and by length: every stop rule gets exercised on real generations.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tunebench.config import validate_experiment
from tunebench.pipeline import open_run
from tunebench.pipeline.prepare import prepare
from tunebench.rundir import RunDir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


@pytest.fixture(scope="session")
def lively_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("lively-model")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        embeddings = model.get_input_embeddings().weight
        for token in ("<|im_end|>", "\n"):
            (token_id,) = tokenizer.encode(token, add_special_tokens=False)
            embeddings[token_id] *= 2.0
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_model_dir / name, out / name)
    return out


def make_run(
    root: Path,
    model_dir: Path,
    *,
    name: str = "run",
    provider: str = "local",
    n: int = 12,
    task: str = "sql",
    **generation: Any,
) -> tuple[Any, RunDir]:
    """A prepared run directory over the real data (first ``n`` eval rows)."""
    generation.setdefault("max_new_tokens", 24)
    config = validate_experiment(
        {
            "name": name,
            "runs_dir": str(root),
            "provider": provider,
            "model": {"name": str(model_dir)},
            "task": {"name": task, "max_eval_examples": n, "max_train_examples": 40},
            "generation": generation,
        }
    )
    run = open_run(config)
    prepare(config, run)
    return config, run


def save_random_adapter(
    model_dir: Path, out_dir: Path, *, seed: int = 1, target_modules: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so it changes the model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules), init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # peft's random init of B is small; make the change visible in greedy text
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir
