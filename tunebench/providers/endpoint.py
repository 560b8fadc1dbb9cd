"""``provider: endpoint``: predictions from any OpenAI-compatible server (vLLM, llama.cpp,
TGI, ``tunebench serve``); nothing is trained, and the server's price is unknown, so its
runs report tokens and timings but no dollars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.config import ExperimentConfig
from tunebench.cost import unpriced_cost
from tunebench.inference.endpoint import predict_endpoint
from tunebench.providers.registry import Provider
from tunebench.rundir import RunDir


def request_predictions(config: ExperimentConfig, run: RunDir, split: str, settings: dict[str, Any]) -> Path:
    """Predict ``split`` through the server ``settings`` name (resumable), record the stage."""
    task, examples = PROVIDER.task_and_examples(config, run, split)
    gen = config.generation
    final = run.predictions(split)
    info = predict_endpoint(
        examples,
        task=task,
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature if gen.do_sample else 0.0,
        out_path=final,
        resume=True,
        **settings,
    )
    run.record_stage(f"predict:{split}", **info, provider=config.provider)
    return final


class EndpointProvider(Provider):
    name = "endpoint"
    priced_by = "none"
    runs_on = "endpoint"

    def predict(self, config: ExperimentConfig, run: RunDir, split: str) -> Path:
        assert config.endpoint is not None  # the config validator guarantees it
        e = config.endpoint
        settings = {
            "base_url": e.base_url,
            "model": e.model,
            "api": e.api,
            "api_key_env": e.api_key_env,
            "max_concurrency": e.max_concurrency,
            "max_retries": e.max_retries,
        }
        return request_predictions(config, run, split, settings)

    def cost(self, config: ExperimentConfig, run: RunDir) -> dict[str, Any]:
        return unpriced_cost(config, run)


PROVIDER = EndpointProvider()
