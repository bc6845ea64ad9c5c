"""`adfm-train`'s configuration: typed sections, YAML loading with clear errors, command-line overrides.

The defaults ARE the tiny-synthetic run (`configs/tiny-synthetic.yaml` spells them out): a tiny
random Qwen2.5-VL built on first use and a synthetic split built when none is given, so
`adfm-train` with no arguments trains on a CPU in minutes. `configs/adfm-qwen25vl-7b.yaml` holds the
paper's settings for the real model.

Relative paths are taken from the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from adfm.config import ConfigError, StrictModel, validation_problems
from adfm.geometry import GRID_FACTOR
from adfm.synthetic import DEFECT_KINDS, PART_KINDS

from .modeling import ATTENTION, DTYPES
from .presets import PRESETS


class _Section(StrictModel):
    """A training config section."""


class ModelSection(_Section):
    path: Path = Field(Path(".adfm-cache/tiny-qwen25vl"), description="local checkpoint directory (never a hub id)")
    adapter: Path | None = Field(
        None, description="start from this LoRA adapter (e.g. a warm start) instead of a new one"
    )
    build_tiny: bool = Field(
        True, description="build the tiny random Qwen2.5-VL at `path` when it does not exist (tests, demo)"
    )
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    attn_implementation: Literal[ATTENTION] = "sdpa"  # type: ignore[valid-type]


class SyntheticSection(_Section):
    """A synthetic split built when `data.split` is empty (tiny-synthetic run, tests, benchmarks)."""

    root: Path = Path(".adfm-cache/synthetic-split")
    categories: list[str] = Field(default_factory=lambda: ["washer", "tile"])
    defects: list[str] = Field(default_factory=lambda: ["scratch", "spot"])
    normal_per_category: int = Field(4, ge=0)
    anomalous_per_category: int = Field(4, ge=0)
    image_size: int = Field(256, ge=32, description="side of the square synthetic images, pixels")
    defect_scale: float = Field(1.0, gt=0, le=4, description="size multiplier of the drawn defects")
    seed: int = 0

    @field_validator("categories")
    @classmethod
    def _known_parts(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in PART_KINDS]
        if unknown or not v:
            raise ValueError(f"synthetic categories must be among {', '.join(PART_KINDS)}; got {v}")
        return v

    @field_validator("defects")
    @classmethod
    def _known_defects(cls, v: list[str]) -> list[str]:
        unknown = [d for d in v if d not in DEFECT_KINDS]
        if unknown or not v:
            raise ValueError(f"synthetic defects must be among {', '.join(DEFECT_KINDS)}; got {v}")
        return v


class DataSection(_Section):
    split: Path | None = Field(None, description="split manifest (JSONL of Sample records) to train on")
    synthetic: SyntheticSection | None = Field(
        default_factory=SyntheticSection, description="used only when `split` is empty"
    )
    min_pixels: int = Field(4 * GRID_FACTOR * 4 * GRID_FACTOR, gt=0, description="model-grid pixel budget, low")
    max_pixels: int = Field(8 * GRID_FACTOR * 8 * GRID_FACTOR, gt=0, description="model-grid pixel budget, high")
    use_reference: bool = Field(True, description="show the sample's normal reference image before the query")
    limit: int | None = Field(None, ge=1, description="train on the first N samples only")

    @model_validator(mode="after")
    def _budget(self) -> DataSection:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")
        if self.split is None and self.synthetic is None:
            raise ValueError("set data.split to a split manifest, or data.synthetic to build a synthetic split")
        return self


class RewardSection(_Section):
    alpha: float = Field(1.0, description="weight α of r_count in Eq. 4")
    random_sigma: float = Field(0.1, ge=0, description="σ of the random reward (cls-random preset)")
    random_seed: int = 0


class LoraSection(_Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="linear layers of the language model (the vision tower stays frozen)",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one linear layer, e.g. q_proj")
        return v


class GRPOSection(_Section):
    """GRPO and optimisation settings, passed to TRL's GRPOConfig under the same names.

    per_device_train_batch_size counts completions; per_device_train_batch_size × processes ×
    gradient_accumulation_steps must be a multiple of num_generations (TRL checks this at start,
    when the number of processes is known).
    """

    num_generations: int = Field(4, ge=2, description="responses sampled per prompt (the group)")
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="stop after this many optimizer steps; -1 runs all epochs")
    per_device_train_batch_size: int = Field(4, ge=1, description="completions per device per step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler_type: str = "constant"
    warmup_steps: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="group = z-score advantages")
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 loads no reference model")
    epsilon: float = Field(0.2, gt=0)
    num_iterations: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_completion_length: int = Field(32, ge=1)
    mask_truncated_completions: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    seed: int = 0
    log_completions: bool = False
    dataloader_num_workers: int = Field(0, ge=0)
    report_to: list[str] = Field(default_factory=lambda: ["none"], description="e.g. [tensorboard] or [wandb]")


class VLLMSection(_Section):
    """TRL's vLLM generation, for the datacenter. Untested on the adfm build machines (no GPU, no vLLM)."""

    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = None
    vllm_server_host: str = "0.0.0.0"
    vllm_server_port: int = 8000
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_enable_sleep_mode: bool = False


class TrainConfig(_Section):
    """One training run: model, data, preset, rewards, LoRA, GRPO, generation backend, output."""

    preset: str = "adfm"
    output_dir: Path = Path("runs/tiny-synthetic")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    rewards: RewardSection = Field(default_factory=RewardSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    vllm: VLLMSection = Field(default_factory=VLLMSection)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; known presets: {', '.join(PRESETS)}")
        return v


def validate_config(data: dict[str, Any], source: str = "configuration") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(source, exc), "invalid configuration") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a clear error for a missing file, bad YAML or a non-mapping document."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key=value` override in place; the value is read as YAML (`4`, `true`, `[a, b]`)."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} must look like section.key=value, e.g. grpo.beta=0.04")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML: {exc}") from None
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The embedded default, or a YAML file, with `section.key=value` overrides applied in order."""
    data = read_yaml(path) if path is not None else {}
    for assignment in overrides:
        apply_override(data, assignment)
    source = str(path) if path is not None else "default configuration"
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return validate_config(data, source)


def dump_config(config: TrainConfig) -> str:
    """The configuration as YAML (paths as strings), as written next to every checkpoint."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
