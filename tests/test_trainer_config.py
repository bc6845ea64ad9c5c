"""adfm-train's configuration, presets, CLI surface and shipped config files (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adfm.trainer import cli
from adfm.trainer.config import ConfigError, TrainConfig, apply_override, load_config
from adfm.trainer.presets import PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def test_tiny_synthetic_yaml_is_the_embedded_default():
    assert load_config(CONFIGS / "tiny-synthetic.yaml") == TrainConfig()


def test_7b_config_has_the_papers_settings():
    cfg = load_config(CONFIGS / "adfm-qwen25vl-7b.yaml")
    assert cfg.preset == "adfm"
    assert (cfg.lora.r, cfg.lora.alpha) == (64, 128)
    assert cfg.grpo.num_generations == 6
    assert cfg.grpo.num_train_epochs == 15
    assert cfg.grpo.loss_type == "grpo" and cfg.grpo.scale_rewards == "group"
    assert cfg.grpo.bf16 and cfg.grpo.gradient_checkpointing
    assert cfg.model.dtype == "bfloat16" and cfg.model.attn_implementation == "sdpa"
    assert not cfg.model.build_tiny and cfg.data.synthetic is None
    assert cfg.vllm.use_vllm is False


def test_7b_config_tags_only_what_the_paper_states_as_paper():
    """[paper] marks what the paper states; bf16, checkpointing, α=1.0, the frozen tower are adfm's."""
    tagged: dict[str, set[str]] = {"[paper]": set(), "[adfm]": set()}
    for line in (CONFIGS / "adfm-qwen25vl-7b.yaml").read_text().splitlines():
        key = line.split(":", 1)[0].strip()
        for tag, keys in tagged.items():
            if not line.startswith("#") and tag in line.partition("#")[2]:
                keys.add(key)
    assert tagged["[paper]"] == {"preset", "path", "r", "alpha", "num_generations", "num_train_epochs",
                                 "loss_type", "scale_rewards"}
    assert {"dtype", "bf16", "gradient_checkpointing", "target_modules", "alpha"} <= tagged["[adfm]"]


def test_7b_config_dry_run_validates_without_a_model(capsys):
    assert cli.main(["--config", str(CONFIGS / "adfm-qwen25vl-7b.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "configuration is valid" in out
    assert "LoRA r=64 alpha=128" in out
    assert "language_model" in out  # LoRA on the language model only
    assert "loss grpo" in out and "generations 6" in out


def test_overrides_and_flags(tmp_path: Path):
    cfg = load_config(CONFIGS / "tiny-synthetic.yaml",
                      ["grpo.beta=0.04", "lora.target_modules=[q_proj, v_proj]", "data.split=/x/y.jsonl"])
    assert cfg.grpo.beta == 0.04
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.split == Path("/x/y.jsonl")
    args = cli.build_parser().parse_args(
        ["--preset", "cls-one-stage", "--model", str(tmp_path / "m"), "--max-steps", "3", "--beta", "0.1",
         "--set", "grpo.temperature=0.7"]
    )
    cfg = cli.config_from_args(args)
    assert cfg.preset == "cls-one-stage" and cfg.model.path == tmp_path / "m"
    assert cfg.grpo.max_steps == 3 and cfg.grpo.beta == 0.1 and cfg.grpo.temperature == 0.7


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "expected"),
    [
        ("grpo:\n  num_generations: 1\n", [], r"grpo\.num_generations.*greater than or equal to 2.*got 1"),
        ("grpo:\n  loss_type: ppo\n", [], r"grpo\.loss_type.*got 'ppo'"),
        ("preset: best\n", [], r"unknown preset 'best'"),
        ("lora:\n  rank: 8\n", [], r"lora\.rank: Extra inputs are not permitted"),
        ("data:\n  min_pixels: 9000\n  max_pixels: 100\n", [], r"min_pixels 9000 exceeds max_pixels 100"),
        ("data:\n  synthetic:\n    categories: [bottle]\n", [], r"synthetic categories must be among"),
        ("- a\n- b\n", [], r"top level must be a mapping"),
        ("grpo: [\n", [], r"not valid YAML"),
        ("", ["grpo.beta"], r"must look like section\.key=value"),
        ("", ["grpo.beta.x=1"], r"'beta' is not a section|grpo\.beta"),
    ],
)
def test_bad_config_names_file_field_and_value(tmp_path: Path, yaml_text, overrides, expected):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(path, overrides)
    if not overrides:
        assert str(path) in str(err.value)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    assert cli.main(["--config", str(tmp_path / "nope.yaml"), "--dry-run"]) == 2


def test_apply_override_builds_nested_sections():
    data: dict = {}
    apply_override(data, "data.synthetic.seed=5")
    assert data == {"data": {"synthetic": {"seed": 5}}}


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    parser = cli.build_parser()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help text"
    for sub in ("variance", "gate"):
        assert f"adfm-train {sub}" in text
    for name in PRESETS:
        assert name in text


def test_variance_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["variance", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--split", "--responses", "--num-samples", "--num-generations", "--out"):
        assert flag in text


def test_gate_subcommand_delegates(monkeypatch):
    import sys
    import types

    seen: list[list[str]] = []
    fake = types.ModuleType("adfm.trainer.gate.cli")
    fake.main = lambda argv: seen.append(list(argv)) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "adfm.trainer.gate.cli", fake)
    assert cli.main(["gate", "fit", "--x", "1"]) == 0
    assert seen == [["fit", "--x", "1"]]


def test_presets_match_the_paper_rows():
    expected = {
        "zero-shot": ("multi-stage-v1", ("classification",), False),
        "cls-one-stage": ("one-stage-v1", ("classification",), True),
        "cls-multi-stage": ("multi-stage-v1", ("classification",), True),
        "cls-random-multi-stage": ("multi-stage-v1", ("classification", "random"), True),
        "cls-count-multi-stage": ("multi-stage-v1", ("classification", "count"), True),
        "adfm": ("multi-stage-v1", ("classification", "localization"), True),
    }
    assert {n: (p.prompt_version, p.accuracy_terms, p.trainable) for n, p in PRESETS.items()} == expected
    names = [getattr(f, "func", f).__name__ for f in get_preset("adfm").reward_functions(alpha=0.5)]
    assert names == ["classification_reward", "localization_reward", "format_reward"]
    assert get_preset("adfm").reward_functions(alpha=0.5)[1].keywords == {"alpha": 0.5}
    assert get_preset("adfm").needs_boxes and get_preset("cls-count-multi-stage").needs_boxes
    assert not get_preset("cls-multi-stage").needs_boxes
    with pytest.raises(ValueError, match="known presets"):
        get_preset("nope")


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    launch_flags = {a.dest for a in launch_command_parser()._actions}
    stages = {}
    for name in ("ddp", "zero2", "zero3"):
        config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
        assert config.mixed_precision == "bf16"
        assert set(config.deepspeed_config) <= launch_flags  # every DeepSpeed key is a launch option
        stages[name] = config.deepspeed_config.get("zero_stage")
    assert stages == {"ddp": None, "zero2": 2, "zero3": 3}
