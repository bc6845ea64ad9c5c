"""bench/train_throughput.py: published model shapes, the FLOPs accounting, the variants, and a CPU run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench scripts import their sibling modules the way `python bench/…` runs them."""
    monkeypatch.syspath_prepend(str(BENCH))


def _meta_model(spec, lora_r: int | None = None):
    import torch
    from model_configs import hf_config
    from transformers import Qwen2_5_VLForConditionalGeneration

    from adfm.trainer.modeling import language_model_lora_pattern

    ids = {"image_token_id": 0, "video_token_id": 1, "vision_start_token_id": 2, "vision_end_token_id": 3,
           "eos_token_id": 4, "pad_token_id": 5}
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(hf_config(spec, ids))
        if lora_r is not None:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora_r, target_modules=language_model_lora_pattern(ALL_LINEAR)))
    return model


@needs_torch
@pytest.mark.parametrize("name", ["qwen2.5-vl-7b", "qwen2.5-vl-3b"])
def test_configs_have_the_published_parameter_count(name: str):
    from model_configs import count_parameters, get_spec

    spec = get_spec(name)
    assert count_parameters(spec) == spec.published_parameters


@needs_torch
@pytest.mark.parametrize("name", ["qwen2.5-vl-7b", "qwen2.5-vl-3b"])
def test_parameter_roles_match_the_shapes(name: str):
    from model_configs import get_spec
    from train_flops import count_parameters

    spec = get_spec(name)
    r = 64
    counts = count_parameters(_meta_model(spec, lora_r=r))
    d, ff, kv = spec.hidden_size, spec.intermediate_size, spec.num_kv_heads * spec.head_dim
    assert counts.lm_body == spec.num_layers * (2 * d * d + 2 * d * kv + 3 * d * ff)
    assert counts.lm_head == d * spec.vocab_size
    lora_per_layer = r * ((d + d) * 2 + (d + kv) * 2 + (d + ff) * 3)
    assert counts.lora == counts.trainable_parameters == spec.num_layers * lora_per_layer
    v = spec.vision
    assert counts.vision_merger == (4 * v.hidden_size) ** 2 + 4 * v.hidden_size * d
    # a decoding step reads the language model in float32 here (meta tensors keep the default dtype); the input
    # embedding table only when it is the (tied) LM head
    plain = _meta_model(spec)
    lm = sum(p.numel() for n, p in plain.named_parameters() if "visual" not in n)
    embed = 0 if spec.tie_word_embeddings else spec.vocab_size * d
    assert counts.decode_weight_bytes == 4 * (lm - embed + counts.lora)


def test_flops_formula_by_hand():
    from train_flops import (
        Batch,
        Geometry,
        ParamCounts,
        decode_floor,
        generation_flops,
        scoring_flops,
        training_flops,
    )

    p = ParamCounts(lm_body=100, lm_head=10, lora=1, vision=50, vision_merger=8, total_parameters=0,
                    trainable_parameters=1, decode_weight_bytes=1000)
    g = Geometry(layers=2, attn_width=4, kv_bytes_per_token=8, vision_width=3, vision_full_layers=1,
                 vision_window_layers=2, vision_window_patches=16, vision_merge=4)
    b = Batch(prompt_tokens=(6, 10), new_tokens=4, image_patches=(64,))
    vision = 2 * 50 * 64 + 2 * 8 * 64 / 4 + 4 * 3 * 64 * (1 * 64 + 2 * 16)

    def attn(length: int) -> float:
        return 2 * 2 * 4 * length**2

    gen = sum(2 * 101 * (pt + 4 - 1) + 2 * 10 * 4 + attn(pt + 4) for pt in (6, 10)) + vision
    train = sum(4 * 100 * (pt + 4) + 6 * 1 * (pt + 4) + 4 * 10 * 4 + 3 * attn(pt + 4) for pt in (6, 10)) + vision
    score = sum(2 * 100 * (pt + 4) + 2 * 10 * 4 + attn(pt + 4) for pt in (6, 10)) + vision
    assert generation_flops(p, g, b) == pytest.approx(gen)
    assert training_flops(p, g, b) == pytest.approx(train)
    assert scoring_flops(p, g, b) == pytest.approx(score)
    floor = decode_floor(p, g, b, bandwidth=100.0)
    assert floor.seconds_per_token_step == pytest.approx(10.0)
    assert floor.weights_floor_s == pytest.approx(40.0)
    kv = 8 * sum(4 * pt + 4 * 3 / 2 for pt in (6, 10))
    assert floor.weights_and_kv_floor_s == pytest.approx(40.0 + kv / 100.0)


def test_peak_table():
    from train_flops import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16")[0] == 756e12
    assert peak_flops("NVIDIA B200", "bfloat16")[0] == 2.25e15
    assert "GH200" in peak_flops("NVIDIA GH200 480GB", "bfloat16")[1]
    assert peak_flops("NVIDIA H100 80GB HBM3", "float32")[0] is None
    value, why = peak_flops(None, "float32")
    assert value is None and "achieved FLOP/s" in why
    assert peak_flops("Some Future GPU", "bfloat16")[0] is None


@needs_torch
def test_bandwidth_is_measured_and_small_copies_are_refused():
    from train_flops import measure_bandwidth

    bw = measure_bandwidth("cpu", 8 << 20, repeats=2)
    assert bw["bytes_per_s"] > 0 and bw["copy_bytes"] == 8 << 20 and len(bw["times_s"]) == 2
    with pytest.raises(ValueError, match="too small"):
        measure_bandwidth("cpu", 1000)


def _step_row(step: int, wall: float, generation: float, peak: int | None) -> dict:
    import train_throughput as tt

    row = {key: 0.0 for key in tt.TIME_KEYS}
    row.update(step=step, wall_s=wall, step_s=wall, generation_s=generation, forward_backward_s=wall - generation,
               prompts=2, completions_trained=12, generated_tokens=96, decode_token_steps=8,
               model_flops={"generation": 10.0, "scoring": 5.0, "training": 30.0, "total": 45.0},
               decode_floor_s_per_token_step=0.01, generation_floor_s=0.08, generation_floor_with_kv_s=0.1,
               peak_gpu_memory_bytes=peak)
    return row


def test_summary_leaves_out_warmup_and_divides_totals():
    import train_throughput as tt

    steps = [_step_row(1, 100.0, 90.0, 9), _step_row(2, 2.0, 1.0, 5), _step_row(3, 4.0, 3.0, 7)]
    s = tt.summarize(steps, warmup=1, peak=10.0)
    assert s["measured_steps"] == [2, 3]
    assert s["wall_s"] == pytest.approx(3.0) and s["generation_s"] == pytest.approx(2.0)
    assert s["step_s_range"] == [2.0, 4.0]
    assert s["samples_per_s"] == pytest.approx(4 / 6.0)  # total prompts ÷ total wall time
    assert s["generated_tokens_per_s"] == pytest.approx(192 / 4.0)
    assert s["achieved_flops_per_s"] == pytest.approx(90 / 6.0) and s["mfu"] == pytest.approx(15 / 10.0)
    assert s["generation_vs_floor"] == pytest.approx(4.0 / 0.16)
    assert s["decode_s_per_token_step"] == pytest.approx(4.0 / 16)
    assert s["peak_gpu_memory_bytes"] == 7  # the warm-up step's 9 is left out
    assert s["generation_s_per_completion"] == pytest.approx(4.0 / 24)
    assert tt.summarize(steps, warmup=1, peak=None)["mfu"] is None


def _workload(tmp_path: Path, cuda: bool = False):
    import train_throughput as tt

    return tt.Workload(config=tt.SHIPPED_CONFIG, work=tmp_path, completion_tokens=16, image_size=128, min_pixels=3136,
                       max_pixels=1003520, samples_per_class=2, steps=3, warmup=1, cuda=cuda,
                       dtype="bfloat16" if cuda else "float32")


@needs_torch
@pytest.mark.parametrize("cuda", [False, True])
def test_every_variant_resolves_through_adfm_config(tmp_path: Path, cuda: bool):
    import train_throughput as tt

    w = _workload(tmp_path, cuda)
    batches = {}
    for v in tt.VARIANTS:
        cfg = tt.resolve_config(v, w, tmp_path / "out")
        # what every variant holds fixed
        assert cfg.grpo.num_generations == 6 and cfg.lora.r == 64
        assert cfg.grpo.max_completion_length == 16 and cfg.grpo.max_steps == 4
        assert (cfg.data.min_pixels, cfg.data.max_pixels) == (3136, 1003520) and cfg.data.use_reference
        assert cfg.data.split is None and cfg.data.synthetic.image_size == 128
        assert Path(cfg.model.path) == w.model_dir and not cfg.model.build_tiny
        assert cfg.grpo.bf16 is cuda and cfg.model.dtype == ("bfloat16" if cuda else "float32")
        batches[v.name] = (cfg.grpo.per_device_train_batch_size * cfg.grpo.gradient_accumulation_steps,
                           cfg.grpo.gradient_checkpointing, cfg.grpo.beta, cfg.grpo.loss_type,
                           cfg.model.attn_implementation)
    assert batches["adfm-shipped"] == (12, True, 0.04, "grpo", "sdpa")
    assert batches["trl-defaults"] == (6, True, 0.0, "dapo", "sdpa")
    assert batches["gen-batch-24"][0] == 24
    assert batches["no-checkpointing"][:2] == (12, False)
    assert batches["attn-eager"][4] == "eager" and batches["attn-flash2"][4] == "flash_attention_2"


@needs_torch
def test_trl_defaults_never_touch_held_settings():
    import train_throughput as tt

    keys = {o.split("=", 1)[0].removeprefix("grpo.") for o in tt.trl_default_overrides()}
    assert keys and not keys & tt.HELD_FIXED
    assert {"loss_type", "beta", "gradient_checkpointing", "gradient_accumulation_steps"} <= keys


@needs_torch
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variants", "adfm-shipped,warp-drive"], "warp-drive"),
        (["--steps", "0"], "--steps must be"),
        (["--config", "/nonexistent/run.yaml"], "config file not found"),
        (["--model", "qwen9-vl"], "unknown model size"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture, argv, message):
    import train_throughput as tt

    assert tt.main([*argv, "--scale", "tiny", "--work", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@needs_torch
@pytest.mark.slow
def test_cpu_run_end_to_end(tmp_path: Path):
    """The whole comparison at tiny scale on the CPU: every variant trains one GRPO step through adfm-train."""
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "train_throughput.py"), "--scale", "tiny", "--steps", "1", "--warmup", "0",
         "--work", str(tmp_path / "work"), "--out", str(out), "--bandwidth-mib", "32"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"]["kind"] == "cpu" and "still to be measured" in report["gpu_figures"]
    assert report["model"]["spec"]["name"] == "tiny" and report["model"]["random_weights"]
    assert report["memory_bandwidth"]["bytes_per_s"] > 0
    assert report["peak_flops"]["value"] is None
    by_name = {v["name"]: v for v in report["variants"]}
    assert [c["name"] for c in report["comparison"]] == list(by_name)
    assert by_name["attn-flash2"]["status"] == "skipped" and "CUDA" in by_name["attn-flash2"]["reason"]
    ran = {n: v for n, v in by_name.items() if n != "attn-flash2"}
    assert set(ran) == {"trl-defaults", "adfm-shipped", "attn-eager", "gen-batch-24", "no-checkpointing"}

    for name, v in ran.items():
        assert v["status"] == "ok", (name, v.get("reason"))
        assert v["expectation"] and v["observed"].startswith(f"{v['summary']['samples_per_s']:.3g} samples/s")
        (step,) = v["steps"]
        generated = v["resolved"]["generation_batch_size"]
        # fixed completion length: every completion is exactly 8 tokens, as TRL itself logged
        assert step["completion_tokens_per_sequence"] == [8]
        assert step["trl"]["completions/min_length"] == step["trl"]["completions/max_length"] == 8
        assert step["completions_generated"] == step["completions_trained"] == generated
        assert step["prompts"] == generated / 6 and step["generated_tokens"] == 8 * generated
        assert step["images"] == 2 * generated  # reference + query image per completion
        # the reference forward runs exactly when beta > 0
        assert step["completions_scored"] == (generated if v["resolved"]["beta"] > 0 else 0)
        # the phases add up to the step, and each measured something
        parts = step["generation_s"] + step["preparation_s"] + step["forward_backward_s"] + step["optimizer_s"]
        assert parts == pytest.approx(step["step_s"], rel=1e-6)
        assert step["generation_s"] > 0 and step["forward_backward_s"] > 0 and step["step_s"] <= step["wall_s"]
        assert 0 < step["train_forward_s"] < step["forward_backward_s"]
        assert step["peak_gpu_memory_bytes"] is None and step["mfu"] is None
        assert step["achieved_flops_per_s"] > 0 and step["model_flops"]["training"] > step["model_flops"]["scoring"]
        assert step["generation_vs_floor"] > 1  # nothing decodes faster than streaming its weights
        assert v["model_released"], f"{name}: the model outlived its run (its memory would skew later variants)"
        params = v["model"]["parameters"]
        assert params["trainable_parameters"] == params["lora"] > 0

    assert ran["trl-defaults"]["resolved"]["loss_type"] == "dapo"
    assert ran["gen-batch-24"]["steps"][0]["prompts"] == 4
    assert [p["sequences"] for p in ran["no-checkpointing"]["steps"][0]["train_passes"]] == [2] * 6
    assert ran["no-checkpointing"]["model"]["live"]["gradient_checkpointing"] is False
    assert ran["adfm-shipped"]["model"]["live"]["gradient_checkpointing"] is True
    assert ran["attn-eager"]["model"]["live"]["attn_implementation"] == "eager"
    assert "vs adfm-shipped" in ran["gen-batch-24"]["observed"]
