"""A model folder with a config's architecture and random weights (bf16), for timing runs.

Step times do not depend on weight values, so a timing run can build the 1.5B model on the
GPU host from its config and tokenizer (12 MB) instead of copying 1.1 GB of GGUF.
usage: python scripts/gpu/random_model.py SHAPE_DIR OUT_DIR
(SHAPE_DIR: config.json, tokenizer files, optional generation_config.json)
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig


def main(shape: Path, out: Path) -> None:
    if (out / "model.safetensors").is_file():
        print(f"{out} exists")
        return
    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(shape)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for path in shape.iterdir():
        if path.name != "config.json":
            shutil.copy(path, out / path.name)
    if not (out / "generation_config.json").is_file():
        # as the Qwen2.5 instruct preset: stop on <|im_end|>, then <|endoftext|>
        GenerationConfig(eos_token_id=[151645, 151643], pad_token_id=151643).save_pretrained(out)
    print(f"random {config.model_type} model in {out}: {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
