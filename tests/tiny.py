"""A tiny, random-initialised causal LM with a real BPE tokenizer, for plumbing tests.

It mirrors the trap of Qwen2.5's tokenizer on purpose: the tokenizer's EOS and pad are the
same token (``<|endoftext|>``) while the generation config stops on another one
(``<|im_end|>``), so the tests catch a trainer that teaches the wrong stop token or a
collator that masks labels by pad value.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
IM_END = "<|im_end|>"
#: ChatML, as Qwen2.5's template writes a conversation (for tests of chat data).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus(data_dir: Path, limit: int = 2000) -> list[str]:
    """Prompt-like text from the real datasets, to train the tiny tokenizer on."""
    from tunebench.tasks.sql import INSTRUCTION as SQL_INSTRUCTION
    from tunebench.tasks.viggo import INSTRUCTION as VIGGO_INSTRUCTION

    texts = [SQL_INSTRUCTION, VIGGO_INSTRUCTION, "### Input:", "### Context:", "### Response:"]
    rows = json.loads((data_dir / "sql/intersect/spider_create_context_train_db_id.json").read_text())
    texts += [f"{r['question']}\n{r['context']}\n{r['answer']}" for r in rows[:limit]]
    with (data_dir / "viggo/train.csv").open(encoding="utf-8", newline="") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            if i >= limit:
                break
            texts.append(f"{row['ref']}\n{row['mr']}")
    return texts


def build_tiny_model(
    out_dir: Path, data_dir: Path, vocab_size: int = 1024, seed: int = 0, chat_template: str | None = None
) -> Path:
    """Write a tokenizer + random tiny Qwen2 model (safetensors) into ``out_dir`` (with
    ``chat_template``, e.g. :data:`CHATML`, the tokenizer has that chat template)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus(data_dir), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    endoftext, im_end = tokenizer.convert_tokens_to_ids([ENDOFTEXT, IM_END])

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=endoftext,
        pad_token_id=endoftext,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[im_end, endoftext], pad_token_id=endoftext)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
