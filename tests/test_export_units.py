"""Pieces of the export checked without running a model: names, patterns, verdicts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from adfm.export import ExportError
from adfm.export.gguf_common import checkpoint_name
from adfm.export.verify import CaseReport, GgufCheck


def test_in_memory_names_map_to_released_checkpoint_names() -> None:
    assert checkpoint_name("model.language_model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.up_proj.weight"
    assert checkpoint_name("model.visual.merger.mlp.2.bias") == "visual.merger.mlp.2.bias"
    assert checkpoint_name("lm_head.weight") == "lm_head.weight"


def test_window_pattern_needs_evenly_spaced_full_attention_blocks() -> None:
    pytest.importorskip("gguf")
    from adfm.export.gguf_mmproj import window_pattern

    assert window_pattern(SimpleNamespace(fullatt_block_indexes=[7, 15, 23, 31])) == 8
    with pytest.raises(ExportError, match="not evenly spaced"):
        window_pattern(SimpleNamespace(fullatt_block_indexes=[7, 15, 20]))
    with pytest.raises(ExportError, match="missing"):
        window_pattern(SimpleNamespace(fullatt_block_indexes=[]))


def test_unsupported_vision_settings_are_refused() -> None:
    from adfm.export.gguf_mmproj import _check_supported

    ok = dict(patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112, hidden_act="silu",
              hidden_size=1280, intermediate_size=3420)
    _check_supported(SimpleNamespace(**ok))
    with pytest.raises(ExportError, match=r"window_size is 224"):
        _check_supported(SimpleNamespace(**{**ok, "window_size": 224}))


def _case(name: str, agree: int, compared: int = 10, *, near_tie: bool = True, diff: float = 0.001,
          decisions: tuple = (None, None), image_tokens: tuple = ([64], [64]), kld: float = 0.001,
          forced: tuple = (None, None), vision: float = 0.0, klds: list[float] | None = None,
          margins: tuple = (None, None)) -> CaseReport:
    mismatches = [{"step": i, "hf_token": 1, "gguf_token": 2, "hf_margin": 0.0005, "near_tie": near_tie}
                  for i in range(compared - agree)]
    return CaseReport(
        name=name, prompt_tokens=300, image_tokens_hf=image_tokens[0], image_tokens_gguf=image_tokens[1],
        prompt_match=True, first_prompt_difference=None, compared=compared, agree=agree, prefix=agree,
        hf_tokens=compared, gguf_tokens=compared, max_abs_logit_diff=diff, logit_spread=1.0,
        mismatches=mismatches, decision_hf=decisions[0], decision_gguf=decisions[1],
        kld=klds if klds is not None else [kld] * compared, same_top=[i < agree for i in range(compared)],
        forced_decision_hf=forced[0], forced_decision_gguf=forced[1], vision_relative_error=vision,
        margin_hf=margins[0], margin_gguf=margins[1],
    )


def test_float_check_tolerates_near_ties_only() -> None:
    assert GgufCheck("f16", True, [_case("a", 9)], 0.8).problems() == []
    problems = GgufCheck("f16", True, [_case("a", 9, near_tie=False)], 0.8).problems()
    assert problems and "beyond float rounding" in problems[0]
    problems = GgufCheck("f16", True, [_case("a", 10, diff=0.5)], 0.8).problems()
    assert problems and "conversion is wrong" in problems[0]


def _q4(*cases: CaseReport, random_weights: bool = False, mmproj_type: str = "f16",
        reference: GgufCheck | None = None) -> GgufCheck:
    return GgufCheck("q4_k_m", False, list(cases), 0.8, quant="q4_k_m", mmproj_type=mmproj_type,
                     random_weights=random_weights, reference=reference)


def _f16(*cases: CaseReport) -> GgufCheck:
    return GgufCheck("f16", True, list(cases), 0.8)


def test_quantized_check_applies_the_bounds_of_its_type() -> None:
    passing = _q4(_case("a", 9), _case("b", 8))  # same top 85 %, KLD 0.001: inside q4_k_m's bounds
    assert passing.same_top == pytest.approx(0.85) and passing.problems() == []
    low = _q4(_case("a", 8), _case("b", 8))
    assert low.problems() == ["q4_k_m: same top token as HF at 80.0% of steps, below the q4_k_m bound 85%"]
    far = _q4(_case("a", 10, kld=0.5), _case("b", 10))
    assert far.problems() == [
        "q4_k_m: mean KL divergence from HF 0.2505 nats/token exceeds the q4_k_m allowance 0.04691 "
        "(absolute bound 0.1; float file 0)",
        "q4_k_m: 50.0% of steps have a KL divergence above 0.156 nats (the q4_k_m limit is 5% of steps; "
        "worst step 0.5)"]
    infinite = _q4(_case("a", 10, kld=float("inf")), _case("b", 10))
    assert "exceeds the q4_k_m allowance" in infinite.problems()[0]
    q8 = GgufCheck("q8_0", False, [_case("a", 9)], 0.8, quant="q8_0")  # 90 % < q8_0's 95 %
    assert "below the q8_0 bound 95%" in q8.problems()[0]


def test_decisions_count_only_where_the_reference_decides() -> None:
    # HF's free-running answers never reached <answer> (None == None is no agreement); the fixed answer
    # shows HF deciding in one case only, and the quantized file agreeing there
    undecided = _q4(_case("a", 10, forced=(None, True)), _case("b", 10, forced=(True, True)))
    assert undecided.decision_agreement == 1.0 and len(undecided.deciding_cases) == 1
    flipped = _q4(_case("a", 10, forced=(True, False)), _case("b", 10, forced=(False, False)))
    assert flipped.decision_agreement == 0.5
    assert flipped.problems() == [
        "q4_k_m: decision agreement 50.0% over the 2 cases where HF decides clearly is below the floor 80%"]
    none = _q4(_case("a", 10), _case("b", 10))
    assert none.decision_agreement is None and none.problems() == []
    assert any("decides clearly in none" in n for n in none.notes())


def test_a_random_weight_model_skips_the_language_model_bounds_not_the_vision_bound() -> None:
    bad = (_case("a", 1, kld=3.0, forced=(True, False)), _case("b", 2, vision=0.2))
    check = _q4(*bad, random_weights=True, mmproj_type="q8_0")
    assert check.problems() == [
        "b: the q8_0 projector's image embeddings differ from HF's vision tower by 20.0% of their spread (limit 15%)"]
    assert any("random-weight model" in n for n in check.notes())
    assert check.summary()["bounds"] == {"max_mean_kld": 0.1, "min_same_top": 0.85, "applied": False}


def test_a_resized_image_fails_any_check() -> None:
    problems = GgufCheck("f16", True, [_case("a", 10, image_tokens=([64], [100]))], 0.8).problems()
    assert problems and "resized again" in problems[0]


def test_summary_is_json_ready() -> None:
    import json

    summary = GgufCheck("q8_0", False, [_case("a", 10)], 0.9, quant="q8_0").summary()
    assert json.loads(json.dumps(summary))["token_agreement"] == 1.0
    assert summary["mean_kld"] == pytest.approx(0.001) and summary["decision_agreement"] is None
    assert np.isfinite(summary["max_relative_logit_error"])


def test_verification_images_are_read_onto_the_grid_and_bad_ones_named(tmp_path) -> None:
    from PIL import Image

    from adfm.export.verify import load_cases

    Image.new("RGB", (400, 300), (90, 90, 90)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (case,) = load_cases([tmp_path], min_pixels=112 * 112, max_pixels=224 * 224)
    width, height = case.images[0].size
    assert width % 28 == 0 and height % 28 == 0 and width * height <= 224 * 224
    (tmp_path / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ExportError, match=r"b\.png: cannot use it"):
        load_cases([tmp_path], min_pixels=112 * 112, max_pixels=224 * 224)
    with pytest.raises(ExportError, match="not found"):
        load_cases([tmp_path / "missing.png"], min_pixels=112 * 112, max_pixels=224 * 224)


def test_tokenizer_probe_reports_where_llama_cpp_parts_from_hf() -> None:
    from adfm.export.verify import tokenizer_mismatch

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 2, 3, 4]}

        def decode(self, ids):
            return "".join(map(str, ids))

    same = SimpleNamespace(tokenize=lambda text: [1, 2, 3, 4])
    other = SimpleNamespace(tokenize=lambda text: [1, 2, 9, 4])
    assert tokenizer_mismatch(same, Tok(), "x") is None
    message = tokenizer_mismatch(other, Tok(), "x")
    assert message is not None and "from token 2" in message and "'34'" in message


def test_trained_settings_follow_the_run_record_and_flags_override_with_a_warning(tmp_path) -> None:
    import json

    from adfm.export.pipeline import ExportConfig, trained_settings

    adapter = tmp_path / "run" / "final"
    adapter.mkdir(parents=True)
    (tmp_path / "run" / "adfm_run.json").write_text(json.dumps({
        "preset": "cls-one-stage", "prompt_version": "one-stage-v1", "min_pixels": 6272, "max_pixels": 28224,
        "use_reference": False, "max_completion_tokens": 1024, "rewards": {"alpha": 1.0},
    }))
    cfg = ExportConfig.from_values(base_dir=tmp_path, out_dir=tmp_path / "out", adapter_dir=adapter)
    plain = trained_settings(cfg)
    assert (plain.prompt_version, plain.min_pixels, plain.max_pixels) == ("one-stage-v1", 6272, 28224)
    assert (plain.use_reference, plain.max_tokens, plain.warnings) == (False, 1024, [])
    assert plain.training()["preset"] == "cls-one-stage"
    assert plain.sources["max_tokens"] == str(tmp_path / "run" / "adfm_run.json")

    flagged = trained_settings(cfg.model_copy(update={"prompt_version": "multi-stage-v1", "max_tokens": 1024}))
    assert flagged.prompt_version == "multi-stage-v1" and flagged.sources["prompt_version"] == "command line"
    assert len(flagged.warnings) == 1  # the same max_tokens as recorded is no override
    assert flagged.warnings[0].startswith(
        "--prompt-version multi-stage-v1 overrides the training record's prompt_version one-stage-v1")

    no_record = trained_settings(ExportConfig.from_values(base_dir=tmp_path, out_dir=tmp_path / "o"))
    assert no_record.prompt_version == "multi-stage-v1" and no_record.min_pixels is None
    assert no_record.training() is None

    (tmp_path / "run" / "adfm_run.json").write_text(json.dumps({"max_pixels": "lots"}))
    with pytest.raises(ExportError, match="max_pixels must be a positive integer, got 'lots'"):
        trained_settings(cfg)


def test_the_kl_allowance_is_relative_to_the_float_file_within_the_absolute_bound() -> None:
    # mean 0.06: inside the absolute q4_k_m bound (0.1), above 1.5 × q4_k_m's expected cost (0.0469)
    costly = (_case("a", 10, kld=0.06), _case("b", 10, kld=0.06))
    assert "exceeds the q4_k_m allowance 0.04691" in _q4(*costly).problems()[0]
    # a float file that itself deviates by 0.01 nats/token raises the allowance to 0.0469 + 2 × 0.01
    noisy_float = _f16(_case("a", 10, kld=0.01), _case("b", 10, kld=0.01))
    relative = _q4(*costly, reference=noisy_float)
    assert relative.allowance.max_mean_kld == pytest.approx(1.5 * 0.031273 + 2 * 0.01)
    assert relative.problems() == []
    # the absolute bound stays the outer limit however noisy the float file
    very_noisy = _f16(_case("a", 10, kld=0.2))
    assert _q4(*costly, reference=very_noisy).allowance.max_mean_kld == 0.1
    summary = relative.summary()["relative_bounds"]
    assert summary["float_mean_kld"] == pytest.approx(0.01) and summary["applied"] is True


def test_a_file_badly_wrong_on_a_few_steps_fails_however_small_its_mean() -> None:
    # 2 of 20 steps at 0.3 nats (mean 0.031: inside both mean bounds), every top token the same
    spiky = (_case("a", 10, klds=[0.3, 0.3] + [0.001] * 8), _case("b", 10))
    check = _q4(*spiky)
    assert check.mean_kld < check.allowance.max_mean_kld and check.far_step_share() == pytest.approx(0.1)
    assert check.problems() == [
        "q4_k_m: 10.0% of steps have a KL divergence above 0.156 nats (the q4_k_m limit is 5% of steps; "
        "worst step 0.3)"]
    # one step in twenty is within the share
    assert _q4(_case("a", 10, klds=[0.3] + [0.001] * 9), _case("b", 10)).problems() == []
    # a float file whose own worst step is 0.1 nats moves the far-step line to 0.156 + 2 × 0.1
    float_ref = _f16(_case("a", 10, klds=[0.1] + [0.0] * 9), _case("b", 10, kld=0.0))
    assert _q4(*spiky, reference=float_ref).problems() == []


def _decided(name: str, margin_hf: float, margin_q4: float) -> CaseReport:
    return _case(name, 10, forced=(margin_hf > 0, margin_q4 > 0), margins=(margin_hf, margin_q4))


def test_near_ties_within_the_float_noise_do_not_count_against_decision_agreement() -> None:
    # 5 clear decisions kept, one near tie flipped (HF +0.1, q4 -0.05): within the 0.25 floor
    cases = [_decided(f"c{i}", 2.0, 1.9) for i in range(5)] + [_decided("tie", 0.1, -0.05)]
    check = _q4(*cases)
    assert [c.name for c in check.near_tie_cases] == ["tie"] and len(check.deciding_cases) == 5
    assert check.decision_agreement == 1.0 and check.problems() == []
    assert any("tie: near tie" in n for n in check.notes())
    assert check.summary()["near_tie_cases"] == [
        {"case": "tie", "margin_hf": 0.1, "margin_gguf": -0.05, "near_tie_margin": 0.25, "agree": False}]
    # flips by clear margins count: 3 of 5 fails the 80 % floor
    flipped = [_decided(f"c{i}", 2.0, 1.9) for i in range(3)] + [_decided("x", 1.0, -0.5), _decided("y", -1.0, 0.3)]
    assert "decision agreement 60.0%" in _q4(*flipped).problems()[0]
    # the float file's deviation on a case widens its near-tie margin to TIE_FACTOR × that deviation
    float_ref = _f16(*[
        _case(c.name, 10, margins=(c.margin_hf, c.margin_hf + (0.6 if c.name in ("x", "y") else 0.01)))
        for c in flipped
    ])
    widened = _q4(*flipped, reference=float_ref)
    assert widened.near_tie_margin(3) == pytest.approx(1.2) and widened.near_tie_margin(0) == 0.25
    assert [c.name for c in widened.near_tie_cases] == ["x", "y"] and widened.problems() == []
