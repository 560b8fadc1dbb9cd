"""Loading a model: a preset name, a local folder, a .gguf file or a hub id -> a transformers
model and tokenizer on a device, in a dtype, optionally 8-/4-bit, with the attention kernel
chosen for training or generation. Where the weights come from is :mod:`.presets`' job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunebench.errors import TunebenchError
from tunebench.models.presets import resolve_model_dir

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

    from tunebench.config import ModelConfig


def load_tokenizer(name_or_path: str, cache_dir: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a preset, folder, GGUF file or hub id (see :func:`resolve_model_dir`)."""
    from transformers import AutoTokenizer

    folder = resolve_model_dir(name_or_path, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as exc:
        raise TunebenchError(f"cannot load tokenizer '{name_or_path}': {exc}".splitlines()[0]) from None
    return tokenizer


def _device(device: str | torch.device | None) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 elsewhere; other names map to torch dtypes."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def _quantization_config(kind: str, device: torch.device, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes config for ``8bit``/``4bit`` (QLoRA's NF4 + double quantisation). On CUDA, or
    on the CPU through bitsandbytes' CPU backend (slow; what the tests exercise)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TunebenchError(
            f"model.quantization '{kind}' needs bitsandbytes: run `pip install bitsandbytes`"
        ) from None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def attention_implementation(
    requested: str, device: torch.device, for_training: bool, dtype: torch.dtype | None = None
) -> str:
    """The transformers attention name. ``auto`` on CUDA: the var-len flash kernel for training
    in bf16/fp16 (packed rows, :mod:`.varlen`; sdpa for float32) and
    grouped-query sdpa for generation (no per-head copy of the KV cache,
    :mod:`.attention`); sdpa on CPU. ``dtype``: the compute dtype."""
    import torch

    from tunebench.models import attention, varlen

    half = dtype is None or dtype in (torch.bfloat16, torch.float16)
    if requested == "auto" and device.type == "cuda":
        trainable = "varlen" if varlen.available() and half else "sdpa"
        requested = trainable if for_training else "sdpa_grouped"
    elif requested == "auto":
        requested = "sdpa"
    if requested == "sdpa_grouped":
        return attention.register()
    if requested == "varlen":
        if not varlen.available():
            raise TunebenchError("model.attn_implementation: varlen needs a CUDA GPU and torch >= 2.9")
        if not half:
            raise TunebenchError(
                f"model.attn_implementation: varlen runs in bfloat16/float16, model.dtype is {dtype}"
            )
        return varlen.register()
    return requested


def load_model(
    cfg: ModelConfig,
    *,
    device: str | torch.device | None = None,
    for_training: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``cfg.name`` (preset, folder, GGUF or hub id) and its tokenizer onto ``device``.

    dtype ``auto`` is bfloat16 on CUDA and float32 on CPU; attention ``auto`` is sdpa. The model is
    in eval mode unless ``for_training`` (then ``use_cache`` is off, and a k-bit model is prepared
    for LoRA with peft). It never carries a GGUF quantizer.
    """
    from transformers import AutoModelForCausalLM

    dev = _device(device)
    dtype = resolve_dtype(cfg.dtype, dev)
    quant = None if cfg.quantization == "none" else _quantization_config(cfg.quantization, dev, dtype)
    folder = resolve_model_dir(cfg.name, cfg.cache_dir)
    tokenizer = load_tokenizer(folder)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": attention_implementation(cfg.attn_implementation, dev, for_training, dtype),
        "trust_remote_code": cfg.trust_remote_code,
    }
    if quant is not None:
        place = (dev.index or 0) if dev.type == "cuda" else "cpu"  # bitsandbytes loads in place
        kwargs.update(quantization_config=quant, device_map={"": place})
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise TunebenchError(f"cannot load model '{cfg.name}': {exc}".splitlines()[0]) from None
    if quant is None:
        model.to(dev)
    if getattr(model, "hf_quantizer", None) is not None and quant is None:
        raise TunebenchError(
            f"model '{cfg.name}' loaded quantized ({model.hf_quantizer}); expected dense weights"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(
            pad_token_id(tokenizer, model.generation_config)
        )
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if for_training:
        model.config.use_cache = False
        if quant is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model.train()
    else:
        model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- special ids


def id_list(value: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """A config's token id field (one id, several, or none) as a list."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None
) -> list[int]:
    """Every id generation must stop on: the generation config's EOS id(s), then the tokenizer's EOS."""
    ids = id_list(getattr(generation_config, "eos_token_id", None)) + id_list(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))


def training_eos_id(tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None) -> int:
    """The one token appended (and labelled) after every training target.

    The first EOS of the generation config when it has one, else the tokenizer's EOS: for
    Qwen2.5-Instruct that is ``<|im_end|>``, the token its generation stops on first; a model
    trained to emit the tokenizer's ``<|endoftext|>`` instead would still stop, but a tokenizer
    whose EOS is not a stop id at all (the tiny fixture, older conversions) would never stop.
    """
    ids = id_list(getattr(generation_config, "eos_token_id", None))
    if ids:
        return ids[0]
    if tokenizer.eos_token_id is None:
        raise TunebenchError("the tokenizer has no EOS token and the generation config names none")
    return int(tokenizer.eos_token_id)


def pad_token_id(tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None) -> int:
    """A pad id: the tokenizer's, else the generation config's, else the training EOS.

    Pad may equal EOS, so collators must mask labels by position (the attention mask), never by
    comparing token ids with this value.
    """
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    gen_pad = getattr(generation_config, "pad_token_id", None)
    if gen_pad is not None:
        return int(gen_pad)
    return training_eos_id(tokenizer, generation_config)
