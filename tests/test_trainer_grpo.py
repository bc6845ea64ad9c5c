"""GRPO + LoRA runs of the tiny model through `adfm-train`: in process, resumed, and on two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adfm.trainer import cli

ROOT = Path(__file__).resolve().parents[1]

# Smallest run that still does GRPO: one prompt of two 8-token responses per step, 64×64-token images.
SMALL = [
    "--set", "grpo.num_generations=2",
    "--set", "grpo.per_device_train_batch_size=2",
    "--set", "grpo.max_completion_length=8",
    "--set", "data.max_pixels=12544",
    "--set", "data.use_reference=false",
    "--set", "data.synthetic.normal_per_category=1",
    "--set", "data.synthetic.anomalous_per_category=1",
    "--set", "data.synthetic.categories=[washer]",
    "--set", "data.synthetic.image_size=128",
]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _lora_b_norm(adapter_dir: Path) -> float:
    """Sum of |B| over the adapter: PEFT starts every lora_B at zero, so > 0 means training moved it."""
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert any("language_model" in k for k in tensors)
    assert not any("visual" in k for k in tensors), "the vision tower must stay frozen"
    return sum(float(t.abs().sum()) for k, t in tensors.items() if "lora_B" in k)


@pytest.mark.slow
def test_two_grpo_steps_change_lora_and_log_every_reward(tiny_model_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    base = ["--model", str(tiny_model_dir), "--output-dir", str(run), "--set",
            f"data.synthetic.root={tmp_path / 'syn'}", *SMALL]
    # A random model never writes a readable answer, so only the noise term gives the group variance
    # (with cls-only or adfm rewards every group has zero std and nothing moves).
    code = cli.main([*base, "--preset", "cls-random-multi-stage", "--max-steps", "2", "--set", "grpo.save_steps=1"])
    assert code == 0
    assert _lora_b_norm(run / "final") > 0
    logs = [m for m in _metrics(run) if "frac_reward_zero_std" in m]
    assert [m["step"] for m in logs] == [1, 2]
    for m in logs:
        for fn in ("classification_reward", "random_reward", "format_reward"):
            assert f"rewards/{fn}/mean" in m and f"rewards/{fn}/std" in m
        assert m["frac_reward_zero_std"] == 0.0  # noise separates every group
    record = json.loads((run / "checkpoint-2" / "adfm_run.json").read_text())
    assert record["prompt_version"] == "multi-stage-v1" and record["preset"] == "cls-random-multi-stage"
    assert record["base_model"] == str(tiny_model_dir.resolve())
    assert json.loads((run / "rank_agreement.json").read_text())["agree"] is True

    # a fresh run into the same directory is refused; --resume continues from checkpoint-2
    assert cli.main([*base, "--preset", "cls-random-multi-stage", "--max-steps", "3"]) == 2
    assert cli.main([*base, "--preset", "cls-random-multi-stage", "--max-steps", "3", "--resume"]) == 0
    state = json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


@pytest.mark.slow
def test_adfm_preset_logs_localization_terms(tiny_model_dir: Path, tmp_path: Path):
    run = tmp_path / "adfm"
    code = cli.main(["--model", str(tiny_model_dir), "--output-dir", str(run), "--preset", "adfm",
                     "--max-steps", "1", "--set", f"data.synthetic.root={tmp_path / 'syn'}", *SMALL])
    assert code == 0
    (log,) = [m for m in _metrics(run) if "frac_reward_zero_std" in m]
    for key in ("rewards/classification_reward/mean", "rewards/localization_reward/mean",
                "rewards/format_reward/mean", "localization/count", "localization/giou", "frac_reward_zero_std"):
        assert key in log


def test_missing_inputs_are_clear_errors(tmp_path: Path, capsys):
    missing_model = ["--model", str(tmp_path / "no-model"), "--set", "model.build_tiny=false",
                     "--output-dir", str(tmp_path / "r1")]
    assert cli.main(missing_model) == 2
    assert "model directory not found" in capsys.readouterr().err

    not_a_checkpoint = tmp_path / "empty-model"
    not_a_checkpoint.mkdir()
    assert cli.main(["--model", str(not_a_checkpoint), "--output-dir", str(tmp_path / "r2")]) == 2
    assert "no config.json" in capsys.readouterr().err

    assert cli.main(["--preset", "zero-shot", "--output-dir", str(tmp_path / "r3")]) == 2
    assert "evaluated, not trained" in capsys.readouterr().err


def test_missing_split_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path, capsys):
    code = cli.main(["--model", str(tiny_model_dir), "--split", str(tmp_path / "none.jsonl"),
                     "--output-dir", str(tmp_path / "r")])
    assert code == 2
    assert "split manifest not found" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_end_with_identical_lora(tiny_model_dir: Path, tmp_path: Path):
    """`accelerate launch` with the shipped DDP config on two CPU processes (gloo): 2 steps, ranks agree."""
    run = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "configs" / "accelerate" / "ddp.yaml"),
        "--num_processes", "2", "--mixed_precision", "no",
        "-m", "adfm.trainer.cli",
        "--model", str(tiny_model_dir), "--output-dir", str(run), "--preset", "cls-random-multi-stage",
        "--max-steps", "2", "--set", f"data.synthetic.root={tmp_path / 'syn'}", *SMALL,
        # one prompt per step, its two responses split over the two ranks
        "--set", "grpo.per_device_train_batch_size=1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    agreement = json.loads((run / "rank_agreement.json").read_text())
    assert agreement["ranks"] == 2 and agreement["agree"] is True
    prints = agreement["fingerprints"]
    assert prints["rank-0"]["sha256"] == prints["rank-1"]["sha256"]
    assert prints["rank-0"]["tensors"] > 0
    assert _lora_b_norm(run / "final") > 0  # two steps moved the weights
    assert [m["step"] for m in _metrics(run) if "frac_reward_zero_std" in m] == [1, 2]
