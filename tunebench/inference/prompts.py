"""The text a local model is sent: the task's prompt, after k shots for a base model
(``generation.few_shot``), or the task's chat messages in the model's chat template
(``generation.prompt_format: chat``).

**k-shot format**: k training examples, drawn once with the sampling seed from the prepared
train split (the same shots for every prompt), each written exactly as the model would see it
in training, ``prompt + target + "\\n"``, followed by a blank line; then the example's own
prompt. The ``prompt`` field of each prediction row holds the full text sent to the model.
"""

from __future__ import annotations

import random
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.errors import TunebenchError
from tunebench.rundir import RunDir
from tunebench.tasks import Example, Task
from tunebench.tasks.base import load_prepared


def few_shot_prefix(config: ExperimentConfig, run: RunDir, task: Task) -> str:
    """The k-shot block prepended to every prompt ("" for zero-shot); format in the module doc."""
    k = config.generation.few_shot
    if k == 0:
        return ""
    train = load_prepared(run, "train")
    if len(train) < k:
        raise TunebenchError(f"generation.few_shot: {k} shots requested, the train split has {len(train)}")
    shots = random.Random(config.sampling_seed).sample(train, k)
    return "".join(f"{s.prompt}{s.completion}{task.completion_suffix}\n" for s in shots)


def model_prompts(
    config: ExperimentConfig,
    run: RunDir,
    task: Task,
    examples: list[Example],
    tokenizer: Any | None = None,
    few_shot: bool = False,
) -> list[str]:
    """The text sent to the model: the task's prompt (after k shots), or with
    ``generation.prompt_format: chat`` (and always for chat data, which trains in it) the task's
    chat messages in the tokenizer's chat template."""
    if config.generation.prompt_format == "chat" or task.chat_data:
        return [chat_prompt(tokenizer, task, ex) for ex in examples]
    prefix = few_shot_prefix(config, run, task) if few_shot else ""
    return [prefix + ex.prompt for ex in examples]


def chat_prompt(tokenizer: Any, task: Task, example: Example) -> str:
    """The task's system + user messages (what an OpenAI model is sent), as the model's chat template
    renders them, up to the assistant's turn."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "the model")
        raise TunebenchError(
            f"generation.prompt_format: chat needs a chat template; {name}'s tokenizer has none"
        )
    return str(
        tokenizer.apply_chat_template(task.chat_messages(example), tokenize=False, add_generation_prompt=True)
    )
