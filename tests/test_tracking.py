"""Runs and studies in MLflow, W&B, TensorBoard and Trackio, read back through each library's
own client or files.

One tiny CPU experiment (8 LoRA steps of the tiny model on ViGGO, validation every 2 steps,
both splits scored) runs once through ``run_experiment`` with all four trackers; each test reads
its tracker's copy back and compares it with the run directory's own files: the parameters,
the loss curves (length and values), the final metrics with their CIs, and the cost. The study
test runs base, LoRA and an OpenAI job (tests/openai_emulator.py) and checks MLflow's
parent/child structure.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunebench.config import ExperimentConfig, validate_experiment
from tunebench.errors import TunebenchError
from tunebench.io import iter_jsonl, read_json
from tunebench.pipeline import run_experiment
from tunebench.tracking import track_run

pytestmark = pytest.mark.slow  # the tiny experiment they share takes about a minute on 2 CPU cores

TRACKERS = ["mlflow", "wandb", "tensorboard", "trackio"]
PROJECT = "tracking-test"
STEPS, EVAL_EVERY = 8, 2  # the shared experiment: 8 training steps, 4 validation points


def tiny_config(runs: Path, model: Path, name: str, **tracking: Any) -> ExperimentConfig:
    return validate_experiment(
        {
            "name": name,
            "runs_dir": str(runs),
            "model": {"name": str(model)},
            "task": {"name": "viggo", "max_train_examples": 32, "max_eval_examples": 8},
            "lora": {"dropout": 0.0},
            "training": {
                "max_steps": STEPS,
                "batch_size": 4,
                "eval_every": EVAL_EVERY,
                "warmup_steps": 2,
                "learning_rate": 2e-3,
                "tokens_per_micro_batch": 1024,
                "early_stopping_patience": None,
            },
            "generation": {"max_new_tokens": 12, "batch_size": 8},
            "eval_splits": ["validation", "test"],
            "tracking": tracking,
        }
    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every tracker's local files under one temporary folder: W&B offline (no key), Trackio's
    store, W&B's caches (set before either library is imported)."""
    root = tmp_path_factory.mktemp("stores")
    with pytest.MonkeyPatch.context() as patch:
        for var in ("WANDB_API_KEY", "WANDB_MODE", "RANK", "LOCAL_RANK"):
            patch.delenv(var, raising=False)
        patch.setenv("TRACKIO_DIR", str(root / "trackio"))
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            patch.setenv(var, str(root / var.lower()))
        patch.setenv("NETRC", str(root / "no-netrc"))
        patch.setenv("HOME", str(root / "home"))  # no ~/.netrc key: W&B goes offline
        yield root


@pytest.fixture(scope="module")
def run_dir(stores: Path, tiny_model_dir: Path) -> Path:
    """The tiny experiment, run once through the pipeline with all four trackers."""
    config = tiny_config(stores / "runs", tiny_model_dir, "lora-viggo", report_to=TRACKERS, project=PROJECT)
    return run_experiment(config).root


def curve(root: Path, split: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in iter_jsonl(root / "metrics.jsonl") if r["split"] == split}


def final(root: Path) -> dict[str, float]:
    """What every tracker must hold at the end: each split's headline numbers and CIs, the cost."""
    out = {}
    for split in ("validation", "test"):
        metrics = read_json(root / "eval" / split / "metrics.json")
        out[f"{split}/n"] = metrics["n"]
        out[f"{split}/exact_match"] = metrics["exact_match"]
        out[f"{split}/exact_match_ci95_low"], out[f"{split}/exact_match_ci95_high"] = metrics[
            "exact_match_ci95"
        ]
    cost = read_json(root / "cost.json")
    out["cost/training_gpu_hours"] = cost["training"]["gpu_hours"]
    out["training/steps"] = STEPS
    return out


def check_curves(logged: dict[str, dict[int, float]], root: Path, rel: float = 1e-12) -> None:
    for split in ("train", "validation"):
        expected = curve(root, split)
        assert len(expected) == (STEPS if split == "train" else STEPS // EVAL_EVERY)
        assert sorted(logged[f"{split}/loss"]) == sorted(expected)
        for step, loss in expected.items():
            assert logged[f"{split}/loss"][step] == pytest.approx(loss, rel=rel)


def check_final(logged: dict[str, float], root: Path, rel: float = 1e-12) -> None:
    for key, value in final(root).items():
        assert logged[key] == pytest.approx(value, rel=rel), key
    assert logged["validation/exact_match_ci95_low"] <= logged["validation/exact_match"]


def record(root: Path, tracker: str) -> dict[str, Any]:
    entry = read_json(root / "tracking.json")[tracker]
    assert entry["complete"] is True
    return entry


# --- MLflow ---------------------------------------------------------------------------------
def mlflow_client(runs: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{runs.resolve() / 'mlruns' / 'mlflow.db'}")


def mlflow_curves(client: Any, run_id: str) -> dict[str, dict[int, float]]:
    out = {}
    for key in ("train/loss", "validation/loss"):
        history = client.get_metric_history(run_id, key)
        out[key] = {m.step: m.value for m in history}
        assert len(history) == len(out[key])  # each step once
    return out


def test_mlflow_holds_params_curve_final_metrics_and_files(run_dir: Path, tmp_path: Path) -> None:
    client = mlflow_client(run_dir.parent)
    run = client.get_run(record(run_dir, "mlflow")["run_id"])
    assert run.info.run_name == "lora-viggo" and run.info.status == "FINISHED"
    manifest = read_json(run_dir / "manifest.json")  # MLflow's duration is the run's own
    assert run.info.start_time == int(dt.datetime.fromisoformat(manifest["created"]).timestamp() * 1000)
    last = max(dt.datetime.fromisoformat(s["finished"]) for s in manifest["stages"].values())
    assert run.info.end_time == int(last.timestamp() * 1000)
    params = run.data.params
    assert params["training.learning_rate"] == "0.002" and params["training.max_steps"] == str(STEPS)
    assert params["provider"] == "local" and params["model"] == params["model.name"]
    assert params["task.name"] == "viggo" and params["eval_splits"] == '["validation", "test"]'
    assert "git_commit" in params and params["lora.dropout"] == "0.0"
    check_curves(mlflow_curves(client, run.info.run_id), run_dir)
    check_final(run.data.metrics, run_dir)
    rows = list(iter_jsonl(run_dir / "metrics.jsonl"))
    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/lr")}
    assert lr == {r["step"]: r["lr"] for r in rows if r["split"] == "train"}
    assert len(client.get_metric_history(run.info.run_id, "train/grad_norm")) == STEPS
    assert len(client.get_metric_history(run.info.run_id, "train/tokens_per_s")) == STEPS
    assert run.data.metrics["train/skipped_steps"] == 0
    local = client.download_artifacts(run.info.run_id, "predictions/test.jsonl", str(tmp_path))
    assert Path(local).read_bytes() == (run_dir / "predictions" / "test.jsonl").read_bytes()
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "cost.json", "eval", "predictions"} <= names


def test_logging_again_changes_nothing_and_a_half_logged_run_is_replaced(
    run_dir: Path, tiny_model_dir: Path
) -> None:
    client = mlflow_client(run_dir.parent)
    experiment = client.get_experiment_by_name(PROJECT).experiment_id
    before = read_json(run_dir / "tracking.json")
    assert set(before) == set(TRACKERS)
    # `tunebench run` on the finished run: every stage skipped, nothing logged twice
    config = tiny_config(run_dir.parent, tiny_model_dir, "lora-viggo", report_to=TRACKERS, project=PROJECT)
    assert run_experiment(config).root == run_dir
    assert read_json(run_dir / "tracking.json") == before
    assert [r.info.run_id for r in client.search_runs([experiment])] == [before["mlflow"]["run_id"]]
    # a call interrupted after creating its run: the next one deletes it and logs a whole one
    (run_dir / "tracking.json").write_text(
        json.dumps({**before, "mlflow": {**before["mlflow"], "complete": False}})
    )
    track_run(run_dir, ["mlflow"], project=PROJECT)
    new_id = record(run_dir, "mlflow")["run_id"]
    assert new_id != before["mlflow"]["run_id"]
    assert [r.info.run_id for r in client.search_runs([experiment])] == [new_id]
    assert client.get_run(before["mlflow"]["run_id"]).info.lifecycle_stage == "deleted"
    check_curves(mlflow_curves(client, new_id), run_dir)


# --- W&B ------------------------------------------------------------------------------------
def wandb_records(path: Path) -> list[Any]:
    """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte header, then 32 KiB blocks
    of length-prefixed chunks) of its own protobuf ``Record`` messages, parsed with wandb's
    classes (the SDK ships no Python reader of its own)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_holds_params_curve_and_final_metrics(run_dir: Path) -> None:
    entry = record(run_dir, "wandb")
    assert entry["mode"] == "offline"
    offline = Path(entry["dir"])
    assert offline.parent == run_dir.parent / "wandb" and offline.name.startswith("offline-run-")
    records = wandb_records(next(offline.glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "lora-viggo" and run.project == PROJECT and run.run_id == entry["run_id"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["training.learning_rate"] == 0.002 and config["training.max_steps"] == STEPS
    assert config["provider"] == "local" and config["task.name"] == "viggo"
    curves: dict[str, dict[int, float]] = {"train/loss": {}, "validation/loss": {}}
    for r in records:
        if r.WhichOneof("record_type") != "history":
            continue
        items = {wandb_key(item): json.loads(item.value_json) for item in r.history.item}
        for key in curves:
            if key in items:
                curves[key][items["_step"]] = items[key]
    check_curves(curves, run_dir)
    summary: dict[str, float] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({wandb_key(item): json.loads(item.value_json) for item in r.summary.update})
    check_final(summary, run_dir)
    assert "artifact" in kinds  # the run's files as one artifact


# --- TensorBoard ----------------------------------------------------------------------------
def test_tensorboard_events_hold_hparams_curve_and_final_metrics(run_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    log_dir = Path(record(run_dir, "tensorboard")["log_dir"])
    assert log_dir == run_dir.parent / "tensorboard" / "lora-viggo"
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    curves = {
        key: {e.step: e.value for e in events.Scalars(key)} for key in ("train/loss", "validation/loss")
    }
    check_curves(curves, run_dir, rel=1e-6)  # TensorBoard keeps float32
    check_final({key: events.Scalars(key)[-1].value for key in final(run_dir)}, run_dir, rel=1e-6)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["training.learning_rate"].number_value == pytest.approx(0.002)
    assert hparams["provider"].string_value == "local" and hparams["task.name"].string_value == "viggo"


# --- Trackio --------------------------------------------------------------------------------
def test_trackio_store_holds_config_curve_and_final_metrics(run_dir: Path, stores: Path) -> None:
    from trackio import utils
    from trackio.sqlite_storage import SQLiteStorage

    assert stores / "trackio" == utils.TRACKIO_DIR  # the test's own store, not the user's
    entry = record(run_dir, "trackio")
    assert SQLiteStorage.get_runs(PROJECT) == ["lora-viggo"] and entry["name"] == "lora-viggo"
    config = SQLiteStorage.get_run_config(PROJECT, "lora-viggo")
    assert config["training.learning_rate"] == 0.002 and config["provider"] == "local"
    logs = SQLiteStorage.get_logs(PROJECT, "lora-viggo")
    curves: dict[str, dict[int, float]] = {"train/loss": {}, "validation/loss": {}}
    logged: dict[str, float] = {}
    for row in logs:
        for key in curves:
            if key in row:
                curves[key][row["step"]] = row[key]
        logged.update({k: v for k, v in row.items() if k not in ("step", "timestamp")})
    check_curves(curves, run_dir)
    check_final(logged, run_dir)


# --- failures ---------------------------------------------------------------------------------
def test_a_missing_library_is_one_line_naming_the_extra_before_anything_runs(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "trackio", None)  # as if `tunebench[trackio]` were not installed
    config = tiny_config(tmp_path / "runs", tiny_model_dir, "no-trackio", report_to=["trackio"])
    with pytest.raises(TunebenchError) as info:
        run_experiment(config)
    assert str(info.value) == (
        "tracking.report_to names trackio, but its library is not installed: pip install 'tunebench[trackio]'"
    )
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_server_warns_once_and_the_run_stays_finished(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    copy = tmp_path / "runs" / "lora-viggo"
    copy.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "cost.json"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    records = track_run(copy, ["mlflow"], tracking_uri=f"http://127.0.0.1:{port}")
    assert records == {}
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "mlflow could not log lora-viggo" in warnings[0]
    assert "unreachable" in warnings[0]
    assert not (copy / "tracking.json").exists()  # the next run tries again


def test_only_the_main_process_logs(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = read_json(run_dir / "tracking.json")
    for rank, local_rank in (("1", "1"), ("0", "1")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert track_run(run_dir, ["mlflow"], project="elsewhere") == {}  # a new project: would log
    assert mlflow_client(run_dir.parent).get_experiment_by_name("elsewhere") is None
    assert read_json(run_dir / "tracking.json") == before


# --- a study: a parent run, one child per cell --------------------------------------------
STUDY = """
name: tiny-study
runs_dir: {runs}
defaults:
  model: {{name: {model}}}
  task: {{max_train_examples: 16, max_eval_examples: 8}}
  training: {{max_steps: 4, warmup_steps: 0, batch_size: 4, eval_every: 2, max_length: 256,
              tokens_per_micro_batch: 1024}}
  generation: {{max_new_tokens: 12, batch_size: 8}}
  openai: {{base_url: "{openai}", poll_interval_s: 0.01, n_epochs: 2}}
tasks: [viggo]
systems:
  - {{name: base, provider: base}}
  - {{name: lora, provider: local}}
  - {{name: gpt, provider: openai}}
"""


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from tests.openai_emulator import Emulator

    emu = Emulator().start()
    monkeypatch.setenv("OPENAI_API_KEY", emu.api_key)
    yield emu
    emu.stop()


def test_a_study_is_a_parent_run_with_a_child_per_cell(
    stores: Path, tiny_model_dir: Path, tmp_path: Path, emulator: Any
) -> None:
    from tunebench.study import run_study

    runs = tmp_path / "runs"
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(runs=runs, model=tiny_model_dir, openai=emulator.base_url), encoding="utf-8")
    tracking = {"tracking.report_to": ["mlflow"], "tracking.project": "studies"}
    report = run_study(path, yes=True, overrides=tracking)
    assert report is not None
    client = mlflow_client(runs)
    experiment = client.get_experiment_by_name("studies").experiment_id
    logged = client.search_runs([experiment])
    parents = [r for r in logged if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_name for r in parents] == ["tiny-study"]
    parent = parents[0]
    assert parent.data.tags["kind"] == "study" and parent.data.params["cells"] == "3"
    assert parent.info.run_id == read_json(runs / "tracking.json")["mlflow"]["run_id"]
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= report_files
    children = {
        r.info.run_name: r for r in logged if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == ["base-viggo", "gpt-viggo", "lora-viggo"]
    for name, child in children.items():
        cell = runs / name
        assert child.data.tags["study"] == "tiny-study" and child.data.tags["kind"] == "cell"
        assert (
            child.data.params["provider"]
            == read_json(runs / "study.json")["cells"][["base-viggo", "lora-viggo", "gpt-viggo"].index(name)][
                "provider"
            ]
        )
        metrics = read_json(cell / "eval" / "test" / "metrics.json")
        assert child.data.metrics["test/exact_match"] == pytest.approx(metrics["exact_match"], rel=1e-12)
        low, high = metrics["exact_match_ci95"]
        assert child.data.metrics["test/exact_match_ci95_low"] == pytest.approx(low, rel=1e-12)
        assert child.data.metrics["test/exact_match_ci95_high"] == pytest.approx(high, rel=1e-12)
    # the OpenAI job's loss curve and cost sit beside the local fine-tune's: dollars for OpenAI,
    # GPU-hours for the CPU runs (no CPU price is set, so they have no dollars)
    for name, steps in (("gpt-viggo", 6), ("lora-viggo", 4)):
        history = client.get_metric_history(children[name].info.run_id, "train/loss")
        expected = curve(runs / name, "train")
        assert len(history) == len(expected) == steps
        assert {m.step: m.value for m in history} == pytest.approx(expected, rel=1e-12)
    gpt, lora = children["gpt-viggo"].data.metrics, children["lora-viggo"].data.metrics
    openai_cost = read_json(runs / "gpt-viggo" / "cost.json")["openai"]
    assert gpt["cost/training_usd"] == pytest.approx(openai_cost["training"]["cost_usd"], rel=1e-12)
    assert gpt["cost/training_usd"] > 0
    assert gpt["cost/test_prediction_usd"] == pytest.approx(openai_cost["inference"]["test"]["cost_usd"])
    assert "cost/training_gpu_hours" not in gpt and children["gpt-viggo"].data.params["model"].startswith(
        "ft:"
    )
    local_cost = read_json(runs / "lora-viggo" / "cost.json")
    assert lora["cost/training_gpu_hours"] == pytest.approx(local_cost["training"]["gpu_hours"], rel=1e-12)
    test = local_cost["inference"]["test"]
    assert lora["cost/test_prediction_gpu_hours"] == pytest.approx(test["wall_time_s"] / 3600, abs=1e-6)
    assert "cost/training_usd" not in lora and "train/loss" not in children["base-viggo"].data.metrics
    # the study again: every cell and the parent already logged, nothing new
    run_study(path, yes=True, overrides=tracking)
    assert len(client.search_runs([experiment])) == 4
