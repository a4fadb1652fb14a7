"""Typed configuration of a run: one YAML file per experiment, overridable with dotted ``key=value``.

Every section is a pydantic model that forbids unknown keys, so a typo fails loudly with the key's
full dotted name. Defaults are the small CPU settings; `configs/` holds presets (the paper's recipes
for GPUs, small ones for this machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dits.errors import DitsError

Method = Literal["isft", "idpo", "isft-dpo", "dits", "dits-dpo"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(Section):
    """Which task; ``data_files`` maps a split to a local file; ``options`` are task-specific knobs."""

    name: str = "synth-ie"
    data_files: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)


class EngineConfig(Section):
    """Text generation backend."""

    kind: Literal["hf", "fake"] = "hf"
    batch_size: int = Field(32, ge=1)
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    cache: Literal["static", "dynamic"] = "static"


class DialogueConfig(Section):
    """The turn protocol (Optima: 10 turns, 2000 tokens per utterance)."""

    max_turns: int = Field(6, ge=1)
    max_utterance_tokens: int = Field(96, ge=1)
    max_total_tokens: int | None = None
    stop_on_overlong: bool = True
    demonstration: bool = True


class RewardConfig(Section):
    """R = task − λ_tok·tokens/T + λ_loss / max NLL (see `dits.reward`)."""

    lambda_tokens: float = 0.6
    lambda_loss: float = 1.0
    min_tokens: int = 8
    max_tokens: int = 2000


class ISFTConfig(Section):
    """iSFT sampling: N dialogues per task, best-of-N, keep a top band above ε."""

    tasks_per_iteration: int = Field(64, ge=1)
    samples_per_task: int = Field(8, ge=1)
    temperature: float = 0.7
    initial_temperature: float = 0.3
    format_pool: bool = True
    keep_top_fraction: float = Field(0.7, gt=0, le=1)
    drop_top_fraction: float = Field(0.0, ge=0, lt=1)
    min_reward: float = 0.5


class SearchConfig(Section):
    """Optima's MCTS over dialogue turns, wave-batched across trees."""

    tasks_per_iteration: int = Field(32, ge=1)
    expansions: int = Field(8, ge=1)
    rollouts_per_expansion: int = Field(3, ge=1)
    temperature: float = 0.7
    top_k: int = Field(10, ge=1)
    dedup_threshold: float = 0.25
    merge_threshold: float = 0.1
    max_active_trees: int = Field(64, ge=1)
    token_budget_percentile: float = Field(80, gt=0, le=100)
    token_budget_tasks: int = Field(16, ge=1)
    guidance: Literal["q", "influence"] = "q"
    influence_weight: float = 1.0
    rounds: int = Field(1, ge=1)


class PairConfig(Section):
    """Preference-pair prefilters: chosen-value floor, value gap, top fraction per tree."""

    min_chosen_value: float = 0.4
    min_gap: float = 0.2
    top_fraction_per_tree: float = Field(0.5, gt=0, le=1)


class LoraSettings(Section):
    r: int = Field(8, ge=1)
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainConfig(Section):
    """One SFT or DPO stage (TRL trainers)."""

    lora: bool = True
    lora_settings: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float = 2e-4
    epochs: float = 1.0
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    beta: float = 0.1
    """DPO only: the KL weight."""
    nll_weight: float = 0.0
    """DPO only: weight of the NLL of the chosen answer (Optima's iDPO uses 1)."""


class InfluenceConfig(Section):
    """DITS probes: warm-up θ*, one step per group, metric after the step on V validation tasks."""

    validation_tasks: int = Field(16, ge=1)
    group_size: int = Field(5, ge=1)
    warmup_steps: int = Field(10, ge=0)
    warmup_lr: float = 5e-4
    warmup_batch_size: int = Field(4, ge=1)
    probe_optimizer: Literal["adam", "sgd"] = "adam"
    probe_lr: float | Literal["auto"] = "auto"
    probe_lr_grid: list[float] = Field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    target_change_fraction: float = Field(0.25, gt=0, lt=1)
    estimator: Literal["exact", "racing", "first-order"] = "exact"
    racing_initial_tasks: int = Field(4, ge=1)
    racing_keep_fraction: float = Field(0.5, gt=0, le=1)
    racing_state_budget_mb: float = Field(2048, ge=0)
    adapters_per_batch: int = Field(16, ge=1)
    proxy_holdout_fraction: float = Field(0.0, ge=0, lt=1)
    first_order_proxy: bool = False

    @property
    def racing_state_budget_bytes(self) -> int:
        """``racing_state_budget_mb`` in bytes (what `run_groups` takes)."""
        return int(self.racing_state_budget_mb * 2**20)


class SelectionConfig(Section):
    """H = Q + γ·minmax(I), keep the top α; or an ablation strategy."""

    strategy: Literal["dits", "full", "random", "q", "influence"] = "dits"
    gamma: float = 1.0
    alpha: float = Field(0.5, gt=0, le=1)


class LoopConfig(Section):
    iterations: int = Field(2, ge=1)
    sft_from_initial: bool = True


class EvalConfig(Section):
    split: Literal["train", "validation", "test"] = "test"
    limit: int | None = 50
    self_consistency: int = Field(0, ge=0)
    self_consistency_temperature: float = 0.5


class RunConfig(Section):
    """A whole experiment."""

    name: str = "run"
    method: Method = "isft-dpo"
    seed: int = 0
    model: str = "smollm2-135m"
    runs_dir: str = "runs"
    task: TaskConfig = Field(default_factory=TaskConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    dialogue: DialogueConfig = Field(default_factory=DialogueConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    isft: ISFTConfig = Field(default_factory=ISFTConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    pairs: PairConfig = Field(default_factory=PairConfig)
    sft: TrainConfig = Field(default_factory=TrainConfig)
    dpo: TrainConfig = Field(default_factory=lambda: TrainConfig(learning_rate=5e-5))
    influence: InfluenceConfig = Field(default_factory=InfluenceConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.search.guidance == "influence" and self.method not in ("dits", "dits-dpo"):
            raise ValueError("search.guidance=influence needs method dits or dits-dpo")
        return self

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
        parsed.append((key.strip(), yaml.safe_load(raw) if raw else ""))
    return parsed


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise DitsError(f"config file {path} does not exist")
        source = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DitsError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise DitsError(f"{path} must contain a mapping of config keys")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    return validate_config(data, source)


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if first["type"] == "extra_forbidden":
            raise DitsError(
                f"{source}: unknown config key {key!r}; see the README's config reference"
            ) from exc
        raise DitsError(f"{source}: config key {key!r}: {first['msg']}") from exc


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (saved with every run)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
