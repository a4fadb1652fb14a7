"""Typed configuration of a run: one YAML file per experiment, overridable with dotted ``key=value``.

Every section is a pydantic model that forbids unknown keys, so a typo fails loudly with the key's
full dotted name. Defaults are the small CPU settings; `configs/` holds presets (the paper's recipes
for GPUs, small ones for this machine).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dits.errors import DitsError

Method = Literal["isft", "idpo", "isft-dpo", "dits", "dits-dpo"]
INFLUENCE_METHODS = ("dits", "dits-dpo")
"""Methods that probe influence: θ* and every probe generate as adapters hosted by the engine."""
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*")
"""A run name is one folder name inside ``runs_dir``."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TaskConfig(Section):
    """Which task; ``data_files`` maps a split to a local file; ``options`` are task-specific knobs."""

    name: str = Field(
        "synth-ie", description="task name (see `dits tasks list`), or jsonl:PATH for your own data"
    )
    data_files: dict[str, str] = Field(
        default_factory=dict,
        description="split → local JSON/JSONL file, e.g. {test: dev.jsonl}; splits not listed load from the Hub",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="task-specific knobs, e.g. synth-ie's distractors, kinds, seed"
    )


class EngineConfig(Section):
    """Text generation backend."""

    kind: Literal["hf", "fake", "openai"] = Field(
        "hf",
        description="hf (transformers model, continuous batching), openai (an OpenAI-compatible server: vLLM, "
        "SGLang, transformers serve) or fake (scripted, tests)",
    )
    batch_size: int = Field(
        32, ge=1, description="rows decoded together (slots of the running batch); openai: the local scorer's"
    )
    device: str | None = Field(None, description="torch device, e.g. cuda or cpu; null: cuda if available")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="model weights' dtype; auto: bfloat16 on GPU, float32 on CPU"
    )
    kv_cache_mb: float = Field(
        1024,
        ge=0,
        description="memory for cached keys/values of prompt prefixes, reused across turns and tree "
        "rollouts (least recently used evicted first); 0 turns reuse off",
    )
    base_urls: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000/v1"],
        description="openai: the servers' API roots; each sample goes to one chosen by its seed",
    )
    served_model: str | None = Field(
        None, description="openai: the server's name of `model`; null: its folder path (or hub id)"
    )
    server: Literal["vllm", "transformers", "generic"] = Field(
        "generic",
        description="openai: what the server offers; vllm: NLL and LoRA adapters on the server, transformers "
        "(transformers serve) and generic: NLL by a local copy of the model, no adapters",
    )
    max_concurrency: int = Field(16, ge=1, description="openai: requests in flight per server")
    timeout_s: float = Field(600, gt=0, description="openai: seconds one request may take")
    adapter_dir: str | None = Field(
        None,
        description="openai: folder (readable by the servers) where in-memory adapters are written; "
        "null: a temporary folder (servers on this machine)",
    )

    @field_validator("base_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        """One URL, or several separated by commas (as a command-line override gives them)."""
        return [url.strip() for url in value.split(",") if url.strip()] if isinstance(value, str) else value


class DialogueConfig(Section):
    """The turn protocol (Optima: 10 turns, 2000 tokens per utterance)."""

    max_turns: int = Field(6, ge=1, description="turn cap (Optima: 10)")
    max_utterance_tokens: int = Field(96, ge=1, description="token cap per utterance (Optima: 2000)")
    max_total_tokens: int | None = Field(None, ge=1, description="token cap per dialogue; null: none")
    stop_on_overlong: bool = Field(
        True, description="an utterance at the cap ends the dialogue (and costs the token term)"
    )
    demonstration: bool = Field(
        True, description="a worked example exchange before the conversation (for small models)"
    )


class RewardConfig(Section):
    """R = task − λ_tok·tokens/T + λ_loss / max NLL (see `dits.reward`)."""

    lambda_tokens: float = Field(0.6, ge=0, description="λ_tok, weight of the token term tokens / T_norm")
    lambda_loss: float = Field(
        1.0, ge=0, description="λ_loss, weight of the readability term 1 / max utterance NLL"
    )
    min_tokens: int = Field(
        8, ge=0, description="the token term is −1 for dialogues of ≤ this many tokens (Optima: 40)"
    )
    max_tokens: int = Field(
        2000,
        ge=1,
        description="the readability term is −1 for dialogues over this many tokens (Optima: 2000)",
    )


class ISFTConfig(Section):
    """iSFT sampling: N dialogues per task, best-of-N, keep a top band above ε."""

    tasks_per_iteration: int = Field(64, ge=1, description="training tasks sampled per iteration")
    samples_per_task: int = Field(8, ge=1, description="N, dialogues sampled per task (best of N kept)")
    temperature: float = Field(0.7, ge=0, description="sampling temperature after iteration 0")
    initial_temperature: float = Field(0.3, ge=0, description="sampling temperature at iteration 0")
    format_pool: bool = Field(
        True, description="at iteration 0, each dialogue gets a communication format from a pool of ten"
    )
    keep_top_fraction: float = Field(
        0.7, gt=0, le=1, description="tasks ranked by best reward: the kept band ends at this fraction"
    )
    drop_top_fraction: float = Field(
        0.0, ge=0, lt=1, description="tasks ranked by best reward: the kept band starts at this fraction"
    )
    min_reward: float = Field(
        0.5, description="ε: tasks whose best dialogue's reward is below it are dropped"
    )

    @model_validator(mode="after")
    def _band(self) -> ISFTConfig:
        if self.drop_top_fraction >= self.keep_top_fraction:
            raise ValueError("drop_top_fraction must be below keep_top_fraction, or no task is kept")
        return self


class SearchConfig(Section):
    """Optima's MCTS over dialogue turns, wave-batched across trees."""

    tasks_per_iteration: int = Field(32, ge=1, description="search trees (one per task) per iteration")
    expansions: int = Field(8, ge=1, description="expansions per tree (paper: 8)")
    rollouts_per_expansion: int = Field(3, ge=1, description="rollouts per expansion (paper: 3)")
    temperature: float = Field(0.7, ge=0, description="rollout sampling temperature")
    top_k: int = Field(10, ge=1, description="node selection: softmax over the top k priorities")
    dedup_threshold: float = Field(
        0.25,
        ge=0,
        le=1,
        description="skip candidate nodes within this normalised edit distance of an expanded node",
    )
    merge_threshold: float = Field(
        0.1, ge=0, le=1, description="merge a new utterance into a child within this normalised edit distance"
    )
    max_active_trees: int = Field(64, ge=1, description="trees in flight at once (memory vs batch size)")
    token_budget_percentile: float = Field(
        80,
        gt=0,
        le=100,
        description="T_norm of the search reward: this percentile of sampled dialogue lengths",
    )
    token_budget_tasks: int = Field(16, ge=1, description="tasks sampled (one dialogue each) to set T_norm")
    guidance: Literal["auto", "q", "influence"] = Field(
        "auto",
        description="node priority: q (Optima) or influence (Q + influence_weight · influence; DITS); "
        "auto: influence for method dits and dits-dpo, q otherwise",
    )
    influence_weight: float = Field(
        1.0, ge=0, description="weight of the normalised influence in the node priority (guided search)"
    )
    rounds: int | None = Field(
        None,
        ge=1,
        description="guided search: the expansions are split evenly over this many rounds, the pairs found "
        "so far probed between rounds; null: 2 when guided, 1 otherwise",
    )


class PairConfig(Section):
    """Preference-pair prefilters: chosen-value floor, value gap, top fraction per tree."""

    min_chosen_value: float = Field(0.4, description="a pair is kept only if chosen Q > this")
    min_gap: float = Field(0.2, description="a pair is kept only if chosen Q − rejected Q > this")
    top_fraction_per_tree: float = Field(
        0.5, gt=0, le=1, description="per tree, this top fraction of the pairs by chosen Q is kept"
    )


class LoraSettings(Section):
    """The LoRA adapter's shape."""

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA alpha (the update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(
        min_length=1,
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="modules that get LoRA layers (default: every attention and MLP projection)",
    )


class TrainConfig(Section):
    """One SFT or DPO stage (TRL trainers)."""

    lora: bool = Field(True, description="train a LoRA adapter; false: full fine-tuning")
    lora_settings: LoraSettings = Field(
        default_factory=LoraSettings, description="the adapter when lora is true"
    )
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate")
    epochs: float = Field(1.0, gt=0, description="passes over the training rows (fractions allowed)")
    batch_size: int = Field(4, ge=1, description="rows per optimizer micro-step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(
        1024,
        ge=16,
        description="token limit per training row (SFT views are cut at the end, DPO prompts lose old turns)",
    )
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="learning-rate warm-up, fraction of all steps")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="learning-rate schedule after the warm-up"
    )
    beta: float = Field(0.1, gt=0, description="DPO only: the KL weight β")
    nll_weight: float = Field(
        0.0, ge=0, description="DPO only: weight of the NLL of the chosen answer (Optima's iDPO uses 1)"
    )


class InfluenceConfig(Section):
    """DITS probes: warm-up θ*, one step per group, metric after the step on V validation tasks."""

    validation_tasks: int = Field(
        16, ge=1, description="V, validation tasks per influence estimate (paper: 20)"
    )
    validation_pool: int = Field(
        0,
        ge=0,
        description="extension: > V draws this many validation tasks and keeps the V whose score "
        "calibration probes moved at the chosen step; 0: the first V",
    )
    validation_samples: int = Field(
        1,
        ge=1,
        description="dialogues per validation task: 1 greedy (paper), K > 1 sampled with shared seeds",
    )
    validation_temperature: float = Field(
        0.7, gt=0, description="temperature of the sampled validation dialogues (validation_samples > 1)"
    )
    difference: Literal["forward", "central"] = Field(
        "forward",
        description="forward: F(θ*+Δ) − F(θ*) (paper); central: [F(θ*+Δ) − F(θ*−Δ)] / 2 (twice the dialogues)",
    )
    group_size: int = Field(5, ge=1, description="pairs per probe step (paper: 5)")
    warmup_steps: int = Field(
        10, ge=0, description="DPO steps warming up θ* on the candidate pool (paper: 50)"
    )
    warmup_lr: float = Field(5e-4, gt=0, description="learning rate of the θ* warm-up (paper: 5e-5)")
    warmup_batch_size: int = Field(4, ge=1, description="pairs per warm-up step (paper: 8)")
    warmup_fraction: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="fraction of the candidates (whole trees) θ* warms up on and that are not probed; "
        "0: warm up on the whole pool (reference code)",
    )
    probe_optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="the probe step: adam (one fresh AdamW step, sign-like) or sgd"
    )
    probe_lr: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="learning rate of the probe step; auto: calibrated on probe_lr_grid"
    )
    probe_lr_grid: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
        description="calibration: the learning rates tried, ascending",
    )
    calibration_groups: int = Field(
        6, ge=1, description="calibration: groups probed at every step size tried"
    )
    max_score_drop: float = Field(
        0.1,
        ge=0,
        description="calibration: a step size may lower the mean validation score by at most this",
    )
    estimator: Literal["exact", "racing", "first-order"] = Field(
        "exact", description="exact, racing (successive halving) or first-order (no generation per group)"
    )
    racing_initial_tasks: int = Field(
        4, ge=1, description="racing: validation tasks of the first round (doubled each round up to V)"
    )
    racing_keep_fraction: float = Field(
        0.5, gt=0, le=1, description="racing: fraction of the groups kept after each round"
    )
    racing_state_budget_mb: float = Field(
        2048, ge=0, description="racing: memory (MiB) for the probe adapters kept between rounds"
    )
    adapters_per_batch: int = Field(
        16, ge=1, description="probe adapters whose validation dialogues share engine calls"
    )
    drafts: bool = Field(
        True,
        description="probes replay θ*'s validation dialogues as drafts the engine verifies instead of "
        "decoding (same influence values, less work); false decodes every token",
    )
    proxy_holdout_fraction: float = Field(
        0.0, ge=0, lt=1, description="analysis: trees held out to record the DPO-loss-change proxy; 0: off"
    )
    first_order_proxy: bool = Field(
        False, description="analysis: also record the first-order estimate next to the exact one"
    )

    @field_validator("probe_lr_grid")
    @classmethod
    def _ascending(cls, grid: list[float]) -> list[float]:
        if grid != sorted(set(grid)):
            raise ValueError("the learning rates must be distinct and ascending")
        return grid

    @model_validator(mode="after")
    def _calibrated(self) -> InfluenceConfig:
        if self.probe_lr == "auto" and not self.probe_lr_grid:
            raise ValueError(
                "probe_lr_grid is empty, but probe_lr: auto calibrates on it; list learning rates or set "
                "probe_lr"
            )
        return self

    @property
    def racing_state_budget_bytes(self) -> int:
        """``racing_state_budget_mb`` in bytes (what `run_groups` takes)."""
        return int(self.racing_state_budget_mb * 2**20)


class SelectionConfig(Section):
    """H = Q + γ·minmax(I), keep the top α; or an ablation strategy."""

    strategy: Literal["dits", "full", "random", "q", "influence"] = Field(
        "dits",
        description="dits (top α by H); ablations: full (Optima), random, q (top α by Q), influence (γ = 0)",
    )
    gamma: float = Field(
        1.0, ge=0, description="γ, weight of the min-max normalised influence in H (paper: 1)"
    )
    alpha: float = Field(0.5, gt=0, le=1, description="α, fraction of the pairs kept (paper: 0.5)")


class LoopConfig(Section):
    """The self-training iterations."""

    iterations: int = Field(2, ge=1, description="self-training iterations (dits-dpo runs one)")
    sft_from_initial: bool = Field(
        True, description="every SFT starts from the base model; false: from the latest model"
    )


class EvalConfig(Section):
    """Evaluation before training and after every iteration."""

    split: Literal["train", "validation", "test"] = Field("test", description="the split evaluated")
    limit: int | None = Field(50, ge=1, description="tasks evaluated; null: the whole split")
    self_consistency: int = Field(
        0, ge=0, description="k sampled dialogues per task and a majority vote; 0: one greedy dialogue"
    )
    self_consistency_temperature: float = Field(
        0.5, gt=0, description="temperature of the self-consistency samples"
    )


class DistributedConfig(Section):
    """Beyond one machine: inference stages on Ray actors, training under ``accelerate launch``."""

    backend: Literal["none", "ray"] = Field(
        "none",
        description="none: every stage in this process; ray: iSFT sampling, tree search, evaluation and "
        "probe groups run on Ray actors, each with its own engine (needs the ray extra)",
    )
    workers: int = Field(2, ge=1, description="ray: number of actors (each loads the model once)")
    address: str | None = Field(
        None,
        description="ray: address of a running cluster (e.g. auto, or HEAD_IP:6379 after `ray start "
        "--head`); null: start a local one",
    )
    num_cpus: float = Field(1, ge=0, description="ray: CPUs reserved per actor")
    num_gpus: float = Field(0, ge=0, description="ray: GPUs reserved per actor (fractions share a GPU)")
    train_launcher: Literal["in-process", "accelerate"] = Field(
        "in-process",
        description="how SFT and DPO stages train: in this process, or under `accelerate launch` "
        "(data parallel over num_processes; DeepSpeed or FSDP through accelerate_config)",
    )
    num_processes: int = Field(2, ge=1, description="accelerate: training processes (one per GPU)")
    accelerate_config: str | None = Field(
        None,
        description="accelerate: an accelerate config file passed to `accelerate launch --config_file` "
        "(e.g. TRL's examples/accelerate_configs/zero2.yaml, zero3.yaml, fsdp.yaml); null: plain data parallel",
    )

    PLACEMENT: ClassVar[tuple[str, ...]] = ("backend", "workers", "address", "num_cpus", "num_gpus")
    """Keys that choose where inference runs, not what it computes: a run may resume with others."""


class RunConfig(Section):
    """A whole experiment."""

    name: str = Field("run", description="run name; the run directory is runs_dir/name")
    method: Method = Field(
        "isft-dpo", description="isft, idpo, isft-dpo, dits (isft-dpo + influence selection) or dits-dpo"
    )
    seed: int = Field(0, description="every random choice derives from it")
    replicate: int = Field(
        0,
        ge=0,
        description="replicate index: varies the seeds of the stages after SFT (search, influence, "
        "selection, DPO) but not the SFT model or the tasks, so replicates of an ablation are paired",
    )
    model: str = Field("smollm2-135m", description="base model: built-in name, model folder or hub id")
    runs_dir: str = Field("runs", description="folder of the run directories")
    task: TaskConfig = Field(default_factory=TaskConfig, description="the task and its data")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="text generation")
    dialogue: DialogueConfig = Field(
        default_factory=DialogueConfig, description="the two-agent turn protocol"
    )
    reward: RewardConfig = Field(
        default_factory=RewardConfig, description="R = task − λ_tok · tokens / T_norm + λ_loss / max NLL"
    )
    isft: ISFTConfig = Field(default_factory=ISFTConfig, description="iSFT sampling and best-of-N filtering")
    search: SearchConfig = Field(
        default_factory=SearchConfig, description="tree search over dialogue turns (wave-batched)"
    )
    pairs: PairConfig = Field(default_factory=PairConfig, description="Optima's preference-pair prefilters")
    sft: TrainConfig = Field(default_factory=TrainConfig, description="the SFT stages (TRL SFTTrainer)")
    dpo: TrainConfig = Field(
        default_factory=lambda: TrainConfig(learning_rate=5e-5),
        description="the DPO stages (TRL DPOTrainer)",
    )
    influence: InfluenceConfig = Field(
        default_factory=InfluenceConfig, description="DITS: influence probes and estimators"
    )
    selection: SelectionConfig = Field(
        default_factory=SelectionConfig, description="which preference pairs DPO trains on"
    )
    loop: LoopConfig = Field(default_factory=LoopConfig, description="the self-training iterations")
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="evaluation before training and after every iteration"
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Ray actors for inference and probes, accelerate for training (default: one process)",
    )

    @field_validator("name")
    @classmethod
    def _one_folder(cls, name: str) -> str:
        if not RUN_NAME.fullmatch(name):
            raise ValueError(
                "must be one folder name inside runs_dir (letters, digits and _ . + = -, not starting "
                "with . or -)"
            )
        return name

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.search.guidance == "influence" and self.method not in INFLUENCE_METHODS:
            raise ValueError("search.guidance=influence needs method dits or dits-dpo")
        if self.guided_search and self.search_rounds < 2:
            raise ValueError(
                "an influence-guided search needs search.rounds >= 2 (one round's pairs steer the next); "
                "set search.rounds or search.guidance=q"
            )
        if not self.guided_search and self.search_rounds > 1:
            raise ValueError("search.rounds > 1 only splits an influence-guided search; it does nothing here")
        if self.search_rounds > self.search.expansions:
            raise ValueError(
                f"search.rounds={self.search_rounds} exceeds search.expansions={self.search.expansions}"
            )
        if self.method in INFLUENCE_METHODS and not self.engine_hosts_adapters:
            raise ValueError(
                f"method {self.method} probes influence through adapters the engine hosts; "
                f"engine.kind={self.engine.kind}"
                + (f" with engine.server={self.engine.server}" if self.engine.kind == "openai" else "")
                + " cannot host them: use engine.kind=hf, or engine.kind=openai with engine.server=vllm"
            )
        return self

    @property
    def engine_hosts_adapters(self) -> bool:
        """Whether the configured engine hosts LoRA adapters (`dits.engines.base.Capabilities.adapters`)."""
        return self.engine.kind in ("hf", "fake") or (
            self.engine.kind == "openai" and self.engine.server == "vllm"
        )

    @property
    def guided_search(self) -> bool:
        """Whether the tree search is steered by influence (DITS) rather than Q alone (Optima)."""
        if self.search.guidance == "auto":
            return self.method in ("dits", "dits-dpo")
        return self.search.guidance == "influence"

    @property
    def search_rounds(self) -> int:
        """Rounds of the tree search (``search.rounds``, or 2 when guided and 1 otherwise)."""
        if self.search.rounds is not None:
            return self.search.rounds
        return 2 if self.guided_search else 1

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise DitsError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=3", "name=x"]`` → ``[("a.b", 3), ("name", "x")]`` (values parsed as YAML scalars)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise DitsError(f"override {item!r} must look like key=value (e.g. loop.iterations=1)")
        key, raw = item.split("=", 1)
        try:
            parsed.append((key.strip(), yaml.safe_load(raw) if raw else ""))
        except yaml.YAMLError:
            raise DitsError(f"override {item!r}: {raw!r} is not a YAML value; quote it") from None
    return parsed


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            what = "is a directory, not a YAML file" if path.is_dir() else "does not exist"
            raise DitsError(f"config file {path} {what}")
        source = str(path)
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise DitsError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise DitsError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise DitsError(f"{path} must contain a mapping of config keys")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    return validate_config(data, source)


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """``cfg`` with dotted ``key=value`` overrides applied (validated again)."""
    data = cfg.model_dump(mode="json")
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    return validate_config(data, "overrides")


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """The config of ``data``; the first mistake raises `DitsError` naming the dotted key and the value."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # union members (e.g. "constrained-float") are not keys; list indices are
        parts = [str(p) for p in first["loc"] if isinstance(p, int) or str(p).isidentifier()]
        key = ".".join(parts) or "(top level)"
        if first["type"] == "extra_forbidden":
            raise DitsError(
                f"{source}: unknown config key {key!r}; see the README's config reference"
            ) from exc
        message = first["msg"].removeprefix("Value error, ")
        value = first.get("input")
        got = "" if isinstance(value, dict) else f" (got {value!r:.60})"
        where = f"config key {key!r}: " if parts else ""
        raise DitsError(f"{source}: {where}{message}{got}") from exc


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (saved with every run)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
