"""Shared fixtures: the real data mirror beside the checkout (../shared/data)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TUNEBENCH_DATA_DIR", REPO.parent / "shared" / "data")).resolve()

# Every test (and every CLI call a test makes) reads the local mirror, never the hub.
os.environ.setdefault("TUNEBENCH_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets (../shared/data); the suite cannot run without them."""
    assert SHARED_DATA.is_dir(), f"data mirror not found at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def spider_db_dir(data_dir: Path) -> Path:
    """Real Spider dev databases: <db_id>/<db_id>.sqlite."""
    return data_dir / "sql" / "spider" / "database"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A random-initialised tiny Qwen2 + BPE tokenizer folder (see tests/tiny.py)."""
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), data_dir)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Converted presets for the whole session in a fresh folder ($TUNEBENCH_CACHE, never the
    user's ~/.cache): a preset's GGUF is converted once, by whichever test first needs it, and
    every later test and CLI process reads that conversion."""
    cache = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNEBENCH_CACHE", str(cache))
        yield cache
