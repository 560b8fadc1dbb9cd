"""Local backend: batched ``transformers`` generation with a base model and an optional LoRA
adapter, or a fully fine-tuned model's weights (``training.method: full``) loaded over the base.

What makes it fast (and why each choice is here):

* **Large left-padded batches.** A decode step of a 1.5B model costs about the same for 1 or
  300 sequences (it is bound by reading the weights and by kernel launches), so throughput
  grows almost linearly with the batch. Left padding keeps every sequence's next token in the
  last column, which ``generate`` needs; position ids come from the attention mask.
* **Prompts sorted by length** (done by the caller): little padding per batch, and the longest
  batch runs first so an out-of-memory error shows up at once (and :func:`generate_adaptive`
  then splits the batch instead of failing the run).
* **Early stop per sequence** on the model's stop ids and, for first-line tasks, on the first
  newline after some content (:class:`FirstLineStop`, a vectorised lookup on the device): a
  batch ends when its longest *answer* ends, not after ``max_new_tokens``.
* **Merged LoRA** (``generation.merge_adapter``): the adapter folded into the weights costs
  nothing per token; unmerged it adds two small matmuls per adapted module.
* **bf16 on GPU**, fp32 on CPU (where tests compare outputs exactly).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tunebench.config import ModelConfig
from tunebench.errors import TunebenchError

log = logging.getLogger(__name__)

FINISH_STOP, FINISH_LENGTH, FINISH_NEWLINE = "stop", "length", "newline"


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one ``generate`` call (greedy unless ``do_sample``)."""

    max_new_tokens: int = 100
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop_on_newline: bool = False
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    """One generated continuation: raw text (stop token excluded), why it ended, its token count."""

    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class Result:
    """All continuations of one prompt."""

    prompt_tokens: int
    truncated: bool
    completions: list[Completion] = field(default_factory=list)


# --- loading -------------------------------------------------------------------------------
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base_model(model_cfg: ModelConfig, device: str) -> tuple[Any, Any]:
    """Base model + tokenizer through :mod:`tunebench.models` (presets, GGUF, dtype rules)."""
    from tunebench.models import load_model

    return load_model(model_cfg, device=device, for_training=False)


def require_adapter(adapter_dir: Path) -> None:
    """A one-line error unless ``adapter_dir`` holds a peft adapter."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TunebenchError(
            f"{adapter_dir}: no LoRA adapter (adapter_config.json); run `tunebench train` first"
        )


def require_trained(folder: Path) -> None:
    """A one-line error unless ``folder`` holds a LoRA adapter or full-model weights."""
    from tunebench.models.weights import WEIGHTS_FILE, is_full_model

    if not (is_full_model(folder) or (folder / "adapter_config.json").is_file()):
        raise TunebenchError(
            f"{folder}: no trained weights (adapter_config.json or {WEIGHTS_FILE}); run `tunebench train` first"
        )


def apply_trained(model: Any, folder: Path, merge: bool) -> Any:
    """What training produced, on ``model``: full-model weights copied in (``model/``) or a LoRA
    adapter loaded (``adapter/``, merged when ``merge``)."""
    from tunebench.models.weights import is_full_model, load_weights

    if is_full_model(folder) and not (folder / "adapter_config.json").is_file():
        load_weights(model, folder)
        return model
    return apply_adapter(model, folder, merge)


def apply_adapter(model: Any, adapter_dir: Path, merge: bool) -> Any:
    """Load a peft LoRA adapter onto ``model``; a mismatch becomes a one-line TunebenchError."""
    from peft import PeftModel

    require_adapter(adapter_dir)
    base_name = getattr(model.config, "_name_or_path", "the base model")
    try:
        with _peft_warnings() as warned:
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:300]
        raise TunebenchError(
            f"{adapter_dir}: adapter does not fit base model {base_name} (trained on another model?): {detail}"
        ) from None
    missing = [w for w in warned if "missing adapter keys" in w.lower()]
    if missing:
        raise TunebenchError(
            f"{adapter_dir}: adapter does not fit base model {base_name}: {missing[0].splitlines()[0][:200]}"
        )
    peft_model.eval()
    return peft_model.merge_and_unload() if merge else peft_model


@contextlib.contextmanager
def _peft_warnings() -> Any:
    """Collect peft's load warnings (it only warns about missing adapter keys)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages: list[str] = []
        yield messages
    messages.extend(str(w.message) for w in caught)


def load_generator(
    model_cfg: ModelConfig,
    adapter_dir: Path | None = None,
    *,
    merge: bool = True,
    device: str | None = None,
    long_prompts: str = "truncate_left",
    cache_implementation: str = "dynamic",
) -> LocalGenerator:
    """Base model (+ LoRA adapter, merged or not, or a full fine-tune's weights) ready for
    batched generation."""
    device = device or default_device()
    model, tokenizer = load_base_model(model_cfg, device)
    if adapter_dir is not None:
        model = apply_trained(model, Path(adapter_dir), merge)
    model.eval()
    return LocalGenerator(
        model, tokenizer, device=device, long_prompts=long_prompts, cache_implementation=cache_implementation
    )


# --- stopping ------------------------------------------------------------------------------
class FirstLineStop:
    """Stop a sequence at the first newline that follows some content (per sequence, on device).

    ``task.postprocess`` drops leading newlines and keeps the first line, so a newline before any
    other character must *not* stop generation. Three boolean lookups over the vocabulary
    (token has a newline / has a non-newline char / has a newline after a non-newline char)
    make the rule a couple of gathers per step for the whole batch, with no decoding.
    """

    def __init__(self, lookups: dict[str, torch.Tensor], prompt_len: int) -> None:
        self.has_nl = lookups["has_nl"]
        self.content = lookups["content"]
        self.nl_after_content = lookups["nl_after_content"]
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        generated = input_ids[:, self.prompt_len :]
        last = generated[:, -1]
        started = self.content[generated[:, :-1]].any(dim=1)
        return self.nl_after_content[last] | (started & self.has_nl[last])


def newline_lookups(tokenizer: Any, vocab_size: int, device: str) -> dict[str, torch.Tensor]:
    """Per-token flags for :class:`FirstLineStop` (decoded once per tokenizer)."""
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
    has_nl = torch.zeros(vocab_size, dtype=torch.bool)
    content = torch.zeros(vocab_size, dtype=torch.bool)
    nl_after = torch.zeros(vocab_size, dtype=torch.bool)
    for i, text in enumerate(texts[:vocab_size]):
        has_nl[i] = "\n" in text
        content[i] = bool(text.replace("\n", ""))
        # "x\n", " \n", "\n\nx\n": a newline after a non-newline char ends the first line alone
        nl_after[i] = "\n" in text.lstrip("\n")
    return {
        "has_nl": has_nl.to(device),
        "content": content.to(device),
        "nl_after_content": nl_after.to(device),
    }


# --- generation ----------------------------------------------------------------------------
class LocalGenerator:
    """Batched generation over one loaded model; thread-unsafe (the server serialises calls)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str,
        long_prompts: str = "truncate_left",
        cache_implementation: str = "dynamic",
    ) -> None:
        from transformers import GenerationConfig

        self.model = model
        self.cache_implementation = cache_implementation
        self.tokenizer = tokenizer
        self.device = device
        self.long_prompts = long_prompts
        from tunebench.models import pad_token_id, stop_token_ids

        source = getattr(model, "generation_config", None)
        self.stop_ids = stop_token_ids(tokenizer, source)
        self.pad_id = pad_token_id(tokenizer, source)
        # A clean generation config: the checkpoint's own defaults (repetition_penalty, top_k,
        # sampling on for chat models) must not leak into the study's plain greedy decoding.
        model.generation_config = GenerationConfig(eos_token_id=self.stop_ids, pad_token_id=self.pad_id)
        self.max_context = context_length(model, tokenizer)
        self.vocab_size = int(model.get_input_embeddings().weight.shape[0])
        self._newline: dict[str, torch.Tensor] | None = None
        self._newline_cpu: dict[str, list[bool]] = {}
        self.truncated_count = 0

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def newline_tables(self) -> dict[str, torch.Tensor]:
        """Device lookups for :class:`FirstLineStop` (+ CPU lists for cutting rows without syncs)."""
        if self._newline is None:
            tables = newline_lookups(self.tokenizer, self.vocab_size, "cpu")
            self._newline_cpu = {name: table.tolist() for name, table in tables.items()}
            self._newline = {name: table.to(self.device) for name, table in tables.items()}
        return self._newline

    def encode(
        self, prompts: Sequence[str], max_new_tokens: int, ids: Sequence[str] | None = None
    ) -> tuple[list[list[int]], list[bool]]:
        """Token ids per prompt (and whether it was cut): truncated from the left, or refused."""
        budget = self.max_context - max_new_tokens
        if budget < 1:
            raise TunebenchError(
                f"generation.max_new_tokens={max_new_tokens} leaves no room in the model's context ({self.max_context})"
            )
        encoded = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        out, cut = [], []
        for index, tokens in enumerate(encoded):
            if len(tokens) > budget and self.long_prompts == "error":
                name = ids[index] if ids else f"prompt {index}"
                raise TunebenchError(
                    f"{name}: prompt has {len(tokens)} tokens, more than the context {self.max_context} minus "
                    f"generation.max_new_tokens {max_new_tokens} (set generation.long_prompts: truncate_left)"
                )
            cut.append(len(tokens) > budget)
            out.append(list(tokens[-budget:]))
        return out, cut

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[str], params: SamplingParams, ids: Sequence[str] | None = None
    ) -> list[Result]:
        """Continuations of each prompt (``params.n`` each), in the order given."""
        from transformers import GenerationConfig, StoppingCriteriaList

        if not prompts:
            return []
        if params.n > 1 and not params.do_sample:
            # greedy candidates are all the same: decode once, copy (generate refuses n>1 greedy)
            single = self.generate(prompts, replace(params, n=1), ids)
            for result in single:
                result.completions = [replace(result.completions[0]) for _ in range(params.n)]
            return single
        token_lists, cut = self.encode(prompts, params.max_new_tokens, ids)
        input_ids, attention_mask = self._left_pad(token_lists)
        prompt_len = input_ids.shape[1]
        criteria = StoppingCriteriaList()
        if params.stop_on_newline:
            criteria.append(FirstLineStop(self.newline_tables(), prompt_len))
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=params.do_sample,
            num_return_sequences=params.n,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            cache_implementation=self.cache_implementation,
            **(
                {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
                if params.do_sample
                else {}
            ),
            **({"stop_strings": list(params.stop)} if params.stop else {}),
        )
        if params.seed is not None:
            torch.manual_seed(params.seed)
        extra = {"tokenizer": self.tokenizer} if params.stop else {}
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            stopping_criteria=criteria,
            **extra,
        )
        generated = output[:, prompt_len:].tolist()
        results = []
        for index, tokens in enumerate(token_lists):
            rows = generated[index * params.n : (index + 1) * params.n]
            self.truncated_count += int(cut[index])
            results.append(
                Result(
                    prompt_tokens=len(tokens),
                    truncated=cut[index],
                    completions=[self._finish(row, params) for row in rows],
                )
            )
        return results

    def _left_pad(self, token_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(t) for t in token_lists)
        ids = torch.full((len(token_lists), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(token_lists), width), dtype=torch.long)
        for row, tokens in enumerate(token_lists):
            if tokens:
                ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
                mask[row, width - len(tokens) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _finish(self, tokens: list[int], params: SamplingParams) -> Completion:
        """Cut one generated row where generation stopped and say why."""
        stops = set(self.stop_ids)
        tables = self._newline_cpu if params.stop_on_newline else None
        started = False
        for i, token in enumerate(tokens):
            if token in stops:
                return Completion(self._decode(tokens[:i]), FINISH_STOP, i + 1)
            if tables is not None and token < self.vocab_size:
                if tables["nl_after_content"][token] or (started and tables["has_nl"][token]):
                    return Completion(self._decode(tokens[: i + 1]), FINISH_NEWLINE, i + 1)
                started = started or tables["content"][token]
            if params.stop:
                text = self._decode(tokens[: i + 1])
                cut = first_stop(text, params.stop)
                if cut is not None:
                    return Completion(text[:cut], FINISH_STOP, i + 1)
        return Completion(self._decode(tokens), FINISH_LENGTH, len(tokens))

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text`` (OpenAI leaves the stop string out)."""
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def context_length(model: Any, tokenizer: Any) -> int:
    """The model's context in tokens (tokenizers often report a huge placeholder)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or 2048
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    return int(limit)


def generate_adaptive(
    generator: LocalGenerator, prompts: list[str], params: SamplingParams, ids: list[str]
) -> list[Result]:
    """Generate a batch; on CUDA out-of-memory split it in halves instead of failing the run."""
    try:
        return generator.generate(prompts, params, ids)
    except torch.cuda.OutOfMemoryError:
        if len(prompts) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(prompts) // 2
        log.warning("out of GPU memory with a batch of %d prompts; splitting it", len(prompts))
        return generate_adaptive(generator, prompts[:half], params, ids[:half]) + generate_adaptive(
            generator, prompts[half:], params, ids[half:]
        )
