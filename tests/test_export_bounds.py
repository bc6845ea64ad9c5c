"""Export verification that can fail: quantized bounds on a model with trained weights.

The tiny model fine-tuned to answer in adfm's format (adfm.export.tiny_trained) has peaked logits
like a trained model, so the q4_k_m bounds apply to it. A good export passes; each single-tensor
corruption of bench/export_bounds.py's list either fails verification or leaves every greedy
answer equal to HF's; the projector's weights perturbed fail; fixtures the model decides by a
near tie do not fail a good export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adfm.export import cli
from adfm.export import quantize as quantize_module
from adfm.export.verify import QUANT_BOUNDS, token_divergence
from adfm.manifest import load_model_dir
from tests.conftest import HAS_LLAMA
from tests.gguf_support import CORRUPT_TENSORS, hf_decision_margin, reverse_rows, scale

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAS_LLAMA, reason="needs llama-cpp-python")]


@pytest.fixture(scope="module")
def tiny_trained_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from adfm.export.tiny_trained import build_tiny_trained

    return build_tiny_trained(tmp_path_factory.mktemp("tiny-trained") / "model", tiny_model_dir)


def _export(base: Path, out: Path, *extra: str) -> tuple[int, str]:
    import contextlib
    import io

    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        rc = cli.main(["--base", str(base), "--out", str(out), *extra])
    return rc, log.getvalue()




def test_token_divergence_is_llama_cpps_kl_and_same_top():
    ref = np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]))
    other = np.log(np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]))
    kld, same = token_divergence(ref, other)
    assert kld[0] == pytest.approx(0.0, abs=1e-12)
    # KL(P‖Q) = Σ p ln(p/q) = 0.5 ln 2.5 + 0.3 ln 0.6 + 0.2 ln(2/3)
    assert kld[1] == pytest.approx(0.5 * np.log(2.5) + 0.3 * np.log(0.6) + 0.2 * np.log(2 / 3))
    assert same == [True, False]
    suppressed = np.array([[0.0, -np.inf, 1.0]])
    assert token_divergence(suppressed, suppressed.copy())[0] == [pytest.approx(0.0, abs=1e-12)]
    assert token_divergence(suppressed, np.array([[0.0, -np.inf, np.nan]]))[0] == [float("inf")]


def test_a_good_q4_k_m_export_of_trained_weights_passes_the_bounds(tiny_trained_dir: Path, tmp_path: Path):
    rc, log = _export(tiny_trained_dir, tmp_path / "q4")
    assert rc == 0, log
    verification = load_model_dir(tmp_path / "q4").verification
    assert verification["random_weights"] is None
    q4 = next(c for c in verification["checks"] if c["quant"] == "q4_k_m")
    assert q4["bounds"] == {"max_mean_kld": 0.1, "min_same_top": 0.85, "applied": True}
    assert q4["mean_kld"] <= QUANT_BOUNDS["q4_k_m"].max_mean_kld
    assert q4["same_top"] >= QUANT_BOUNDS["q4_k_m"].min_same_top
    # judged relative to the float file checked first, whose noise it reports
    f16 = verification["checks"][0]
    relative = q4["relative_bounds"]
    assert relative["applied"] and relative["float_mean_kld"] == pytest.approx(f16["mean_kld"], abs=1e-6)
    assert q4["mean_kld"] <= relative["max_mean_kld"] < QUANT_BOUNDS["q4_k_m"].max_mean_kld
    assert q4["far_step_share"] <= relative["max_far_step_share"]
    # eight fixtures; the trained model answers yes or no after <answer> in each: two clearly, six by a
    # near tie (it tells the parts apart by grid size, see adfm.export.tiny_trained)
    assert verification["cases"] == 8 and len(q4["cases"]) == 8
    assert all(c["forced_decision_hf"] is not None for c in q4["cases"])
    assert q4["deciding_cases"] + len(q4["near_tie_cases"]) == 8
    assert q4["deciding_cases"] >= 2 and len(q4["near_tie_cases"]) >= 1
    assert q4["decision_agreement"] == 1.0


def test_one_corrupted_tensor_of_the_quantized_file_fails(tiny_trained_dir: Path, tmp_path: Path, monkeypatch):
    real = quantize_module.quantize_model

    def quantize_then_corrupt(src, dst, quant, n_threads=None):
        real(src, dst, quant, n_threads)
        reverse_rows(Path(dst), "blk.0.ffn_down.weight")

    monkeypatch.setattr(quantize_module, "quantize_model", quantize_then_corrupt)
    rc, log = _export(tiny_trained_dir, tmp_path / "bad")
    assert rc == 1
    assert "verification failed: q4_k_m + mmproj f16" in log
    assert "exceeds the q4_k_m bound" in log or "below the q4_k_m bound" in log
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_a_perturbed_projector_fails(tiny_trained_dir: Path, tmp_path: Path, monkeypatch):
    from adfm.export import gguf_mmproj

    real = gguf_mmproj.write_mmproj

    def write_then_perturb(merged, path, mmproj_type="f16", *args, **kwargs):
        n = real(merged, path, mmproj_type, *args, **kwargs)
        scale(Path(path), "mm.2.weight", 1.25)
        return n

    monkeypatch.setattr(gguf_mmproj, "write_mmproj", write_then_perturb)
    rc, log = _export(tiny_trained_dir, tmp_path / "bad-mmproj", "--quant", "q8_0")
    assert rc == 1
    assert "the projector's image embeddings differ from HF's vision tower" in log
    assert not (tmp_path / "bad-mmproj" / "manifest.json").exists()


def test_a_quantized_projector_is_held_to_the_vision_bound(tiny_trained_dir: Path, tmp_path: Path, monkeypatch):
    rc, log = _export(tiny_trained_dir, tmp_path / "q8-mmproj", "--quant", "q8_0", "--mmproj-type", "q8_0")
    assert rc == 0, log
    checks = load_model_dir(tmp_path / "q8-mmproj").verification["checks"]
    quant = next(c for c in checks if c["mmproj_type"] == "q8_0")
    assert quant["vision_bound"] == 0.15 and quant["max_vision_relative_error"] < 0.15

    from adfm.export import gguf_mmproj

    real = gguf_mmproj.write_mmproj

    def perturb_the_quantized_one(merged, path, mmproj_type="f16", *args, **kwargs):
        n = real(merged, path, mmproj_type, *args, **kwargs)
        if mmproj_type == "q8_0":  # the f16 reference of the float check stays right
            reverse_rows(Path(path), "mm.2.weight")
        return n

    monkeypatch.setattr(gguf_mmproj, "write_mmproj", perturb_the_quantized_one)
    rc, log = _export(tiny_trained_dir, tmp_path / "bad-q8-mmproj", "--quant", "q8_0", "--mmproj-type", "q8_0")
    assert rc == 1
    assert "the q8_0 projector's image embeddings differ" in log


def test_a_random_weight_model_skips_the_quantized_bounds_with_a_note(tiny_model_dir: Path, tmp_path: Path):
    rc, log = _export(tiny_model_dir, tmp_path / "random")
    assert rc == 0, log
    assert "random-weight model" in log and "not applied" in log
    q4 = next(c for c in load_model_dir(tmp_path / "random").verification["checks"] if c["quant"] == "q4_k_m")
    assert q4["bounds"]["applied"] is False
    assert json.loads((tiny_model_dir / "adfm_tiny.json").read_text())["random_weights"] is True


@pytest.fixture(scope="module")
def q4_setup(tiny_trained_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The good f16 and q4_k_m files of the trained model, HF's runs on the default cases and the
    float file's check (the noise the quantized files are judged against)."""
    from adfm.export import export_model, verify
    from adfm.export.merge import check_base_dir, load_merged
    from adfm.protocol import VISION_SPECIAL_TOKENS
    from adfm.runtime.vlm import GgufVlm

    work = tmp_path_factory.mktemp("q4-setup")
    quiet = {"progress": lambda line: None}
    manifest = export_model(tiny_trained_dir, work / "f16", quant="f16", **quiet)
    export_model(tiny_trained_dir, work / "q4", quant="q4_k_m", **quiet)
    merged = load_merged(check_base_dir(tiny_trained_dir), None, dtype="float32")
    tokenizer = merged.processor.tokenizer
    suppress = [tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
    fixed = verify.fixed_answer(tokenizer, manifest.prompt_version)
    cases = verify.default_cases(manifest.min_pixels, manifest.max_pixels)

    def runs_for(some):
        return [verify.hf_run(merged, c, prompt_version=manifest.prompt_version, max_new_tokens=16,
                              suppress_tokens=suppress, fixed=fixed) for c in some]

    def check(model: Path, runs, some, *, reference=None, float_check=False):
        with GgufVlm.from_files(model, work / "q4" / "mmproj-f16.gguf", manifest) as vlm:
            return verify.check_gguf(vlm, runs, some, label="f16" if float_check else "q4_k_m",
                                     float_check=float_check, prompt_version=manifest.prompt_version,
                                     agreement_floor=0.8, quant="f16" if float_check else "q4_k_m",
                                     reference=reference)

    runs = runs_for(cases)
    reference = check(work / "f16" / "model-f16.gguf", runs, cases, float_check=True)
    assert reference.problems() == []
    return {"work": work, "merged": merged, "manifest": manifest, "suppress": suppress, "fixed": fixed,
            "cases": cases, "runs": runs, "runs_for": runs_for, "check": check, "reference": reference}


@pytest.mark.parametrize("tensor", CORRUPT_TENSORS)
def test_each_single_tensor_corruption_fails_or_leaves_the_answers_unchanged(q4_setup, tensor: str, tmp_path: Path):
    import shutil

    model = tmp_path / "corrupt.gguf"
    shutil.copy(q4_setup["work"] / "q4" / "model-q4_k_m.gguf", model)
    reverse_rows(model, tensor)
    check = q4_setup["check"](model, q4_setup["runs"], q4_setup["cases"], reference=q4_setup["reference"])
    if check.problems():
        return
    # it passed: then llama.cpp's free-running greedy answer equals HF's on every case
    assert [c.text_gguf for c in check.cases] == [c.text_hf for c in check.cases], (
        f"{tensor} reversed passes verification with changed answers: "
        f"mean KL {check.mean_kld:.4g}, far-step share {check.far_step_share():.1%}")


def test_fixtures_near_a_tie_do_not_fail_a_good_export(q4_setup):
    s = q4_setup
    margins = {c.name: hf_decision_margin(s["merged"], c, s["manifest"].prompt_version, s["suppress"], s["fixed"])
               for c in s["cases"]}
    near = {name for name, m in margins.items() if abs(m) <= 0.25}
    assert near, margins  # the trained model leaves some fixtures within the near-tie band
    good = s["check"](s["work"] / "q4" / "model-q4_k_m.gguf", s["runs"], s["cases"], reference=s["reference"])
    assert good.problems() == [], good.problems()
    assert near <= {c.name for c in good.near_tie_cases}
    assert not near & {c.name for c in good.deciding_cases}
    assert all(any(f"{name}: near tie" in note for note in good.notes()) for name in near)
