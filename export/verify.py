"""Check an exported GGUF pair against the merged HF model it came from, on the same pixels.

For each fixture case (one image, or a normal reference + the query) both sides get the project's
prompt on the same pre-resized image:

- llama.cpp must tokenize a varied probe text exactly as the HF tokenizer (the GGUF's vocabulary,
  merges and pre-tokenizer are right);
- the prompts must be identical token for token, images included (the same number of visual
  tokens on both sides shows llama.cpp did not resize the grid image again);
- the projector's image embeddings are compared with the HF vision tower's output;
- the HF model answers greedily; llama.cpp is then fed the HF answer (teacher forcing) and its
  logits are compared with HF's at every step: the relative logit error and the steps where its
  top token differs ("token agreement");
- both are also fed a fixed answer in the prompt version's format, up to and past `<answer>`
  (teacher forcing): every answer, however short `--verify-tokens`, reaches the decision, and the
  decision is read from the logits of the first token where the yes and no answers differ;
- both also answer freely: the common prefix of the two answers and their parsed decisions
  (reported; a decision is compared only where the reference model decides).

A float export (f16/f32 language model, paired with an f16 mmproj) must reproduce HF up to
arithmetic noise: a small relative logit error and top-token differences only at near-ties that
the measured error explains. The noise is llama.cpp's own arithmetic more than f16 rounding: on
the tiny model an all-f32 path (f32 weights, f32 mmproj, f32 KV cache) still differs from torch
by ~0.4 % of the logit spread, as the f16 export does. A random-weight model has many near-ties,
so its free-running answers can part ways after a few tokens without any bug; the report says
where and by how much.

A quantized export is held to bounds per quant type, measured the way llama.cpp's own
quantization checks report them (`llama-perplexity --kl-divergence`): the mean per-token KL
divergence from the reference distribution and the share of steps whose top token is the same,
over every teacher-forced step (HF's greedy answer and the fixed answer). The reference is the
merged HF model, which the float export matches to arithmetic noise; that noise is measured (the
float file is checked first) and a quantized file is judged relative to it: its mean KL may reach
its type's expected cost plus twice the float file's, within the absolute bound, and only a small
share of its steps may lie far off, so a file badly wrong on a few steps fails. Decision agreement
counts only cases where the reference decides (its top token at the decision step is yes or no)
by more than a near tie: a yes−no margin within twice the float file's shift of it, or 0.25
logits, is reported and left out. A quantized mmproj is held to a vision-error bound. A
random-weight model (its checkpoint carries adfm's random-weight marker) skips the language-model
bounds with a note: its near-flat logits say nothing about quantization quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adfm.geometry import ModelGrid
from adfm.protocol import attach_images, build_messages, format_response, parse_response

from .errors import ExportError

if TYPE_CHECKING:
    from PIL import Image

    from adfm.runtime.vlm import GgufVlm

    from .merge import MergedModel

#: A float export's logits may differ from HF's by at most this fraction of HF's logit spread
#: (standard deviation). Measured at f16: 0.5 % on the tiny model, 2.7 % at Qwen2.5-VL-7B widths
#: (2 random layers); a conversion bug (wrong rope, swapped tensors) lands far above.
FLOAT_MAX_RELATIVE_LOGIT_ERROR = 0.10
#: The projector's output may differ from the HF vision tower's by at most this fraction of its
#: spread. Measured with an f16 mmproj: 0.25 % (tiny model), 0.4 % (7B vision widths, 4 random
#: blocks); with block 0's q and k swapped on purpose: 1.3 % (tiny) and 128 % (7B widths).
FLOAT_MAX_RELATIVE_VISION_ERROR = 0.05



@dataclass(frozen=True)
class QuantBound:
    """What a quantized language model must keep, against the reference, along teacher-forced answers."""

    max_mean_kld: float  # nats per token
    min_same_top: float  # share of steps with the same top token


#: Bounds per quant type. Where the numbers come from: llama.cpp's perplexity tool README
#: (tools/perplexity/README.md, "LLaMA 2 vs. LLaMA 3 Quantization comparison" and "LLaMA 3 8b
#: Scoreboard", revision f364eb6f, Wikitext-2, KL divergence against the f16 model): LLaMA-3-8B
#: q8_0 mean KLD 0.001355 / same top 97.67 %; q6_K 0.005452 / 96.03 %; q5_K_M 0.010762 / (not
#: listed; between q6_K and q4_K_M); q4_K_M 0.031273 / 91.90 % (LLaMA-2-7B q4_K_M: 0.012686 /
#: 94.67 %). A bound allows about 3× LLaMA-3-8B's mean KLD and 6–7 points below its same-top rate:
#: the check sees a few hundred tokens, not Wikitext's 300k, and a fine-tuned answer format. The
#: trained tiny model (tests/, bench/export_bounds.py) measures inside them; a corrupted tensor
#: lands far outside (bench/results/export_bounds.json).
QUANT_BOUNDS: dict[str, QuantBound] = {
    "q8_0": QuantBound(max_mean_kld=0.01, min_same_top=0.95),
    "q5_k_m": QuantBound(max_mean_kld=0.05, min_same_top=0.90),
    "q4_k_m": QuantBound(max_mean_kld=0.10, min_same_top=0.85),
}
#: A q8_0 mmproj's image embeddings may differ from the HF vision tower's by at most this fraction of
#: their spread (max |Δ| / std). Measured on the tiny trained model (bench/results/export_bounds.json):
#: f16 0.25 %, q8_0 4.6 %; one projector weight ×1.25: 92 %. The bound leaves about 3× the q8_0 figure
#: (a deeper tower adds rounding per block); the float bound (5 %) would sit just above the measurement.
QUANT_MAX_RELATIVE_VISION_ERROR = 0.15
#: Top-token differences count as near-ties when HF's margin is below this many times the
#: largest logit difference measured on that case.
TIE_FACTOR = 2.0

# Bounds relative to the float export. The float (f16/f32) file of the same merged model is checked
# first; its deviation from HF is llama.cpp's own arithmetic, which the quantized file carries too.
# A quantized file is judged against that noise floor plus what its type is expected to cost, and
# the fixed absolute bounds above stay the outer limit. Measured (bench/results/export_bounds.json):
# the good tiny trained exports cost far less than the allowances (q4_k_m mean KL 0.00001–0.0006,
# worst step ≤ 0.007, earlier and current model); the allowances come from real-model quantization
# figures, so that a 3B/7B export is held to what its type costs on a real model, and the
# corruptions that passed the absolute bounds (`blk.1.ffn_down` rows reversed: mean KL 0.085, a
# third of its steps above 0.094) land outside.
# The seeing warm-start model (`adfm-train warmstart`, hidden 256), whose q4_k_m file costs more
# than any other good export measured (mean KL 0.018, worst step 0.91), passes inside them.

#: What quantization of each type is expected to cost, mean KL divergence in nats per token:
#: LLaMA-3-8B against its f16 model on Wikitext-2, as llama.cpp's perplexity tool README lists it
#: (revision f364eb6f; the source of QUANT_BOUNDS).
EXPECTED_MEAN_KLD: dict[str, float] = {"q8_0": 0.001355, "q5_k_m": 0.010762, "q4_k_m": 0.031273}
#: A quantized file's mean KL may exceed its type's expected cost by half: the check sees a few
#: hundred tokens, not 300k, and a 3B model quantizes a little worse than an 8B one.
MEAN_COST_FACTOR = 1.5
#: A step is "far off" when its KL exceeds this many times the type's expected mean cost (q4_k_m:
#: 0.156 nats). Measured on good q4_k_m files: the seeing warm start 2.2 % of its 400 steps (worst
#: step 0.91 nats: a single step can be far off in a good file, so the bound is a share, not a
#: maximum), the tiny trained model none (worst step 0.0004); the earlier tiny trained model with
#: `blk.1.ffn_down` reversed: 21 %.
STEP_COST_FACTOR = 5.0
#: At most this share of the teacher-forced steps may be far off (a file badly wrong on a few steps
#: fails even when its mean is small): about twice the seeing warm start's good q4_k_m file.
MAX_FAR_STEP_SHARE = 0.05
#: The float file's own divergence enters each quantized allowance times this factor. KL divergence is
#: locally a quadratic form in the logit error (½ δᵀFδ), and two errors a, b (float arithmetic,
#: quantization) give at most 2·KL(a) + 2·KL(b) since |a+b|² ≤ 2|a|² + 2|b|².
FLOAT_NOISE_FACTOR = 2.0
#: A deciding case is a near tie, left out of decision agreement, when HF's yes−no logit margin is
#: within TIE_FACTOR × the float file's deviation of that margin, or within this floor (logits):
#: |margin| ≤ 0.25 means P(yes | yes or no) between 44 % and 56 %, a coin flip either way. Measured
#: (bench/results/export_bounds.json): the seeing warm start's f16 file moves a margin by ≤ 0.03, its
#: q4_k_m file by ≤ 0.71; the tiny trained model's f16 file by ≤ 0.002, its q4_k_m file by ≤ 0.06.
#: Quantization moves margins further than float noise does, so a flip of a margin between the floor
#: and that still counts; eight fixtures let one such flip pass the 80 % agreement floor.
NEAR_TIE_FLOOR = 0.25
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Text that exercises a BPE pre-tokenizer: spaces and newlines in runs, digit groups, contractions,
#: punctuation runs, accents, CJK, emoji, box JSON. llama.cpp must split it exactly as HF does.
TOKENIZER_PROBE = (
    "Inspect the part.\n\n  \t Two  spaces, 3 33 333 4444 5.5 6..6 7...7 -12 +0.5e-3\n"
    "It's, I'm, you'RE, we'Ve, they'll, she'd ''''``\"\"....!!!!????  ------======\n"
    "Überprüfung: Kratzer an der Dichtung. 检查零件表面1314次～ 🚀 (normal) 😶\u200d🌫️ ✅\n"
    '<think>[{"bbox_2d": [12, 34, 56, 78], "label": "scratch"}]</think><answer>yes</answer>'
)


@dataclass(frozen=True)
class VerifyCase:
    """Images on their grids (reference first when two) and the product named in the prompt."""

    name: str
    images: tuple[Image.Image, ...]
    product: str | None = None


@dataclass
class HfRun:
    """The merged HF model's greedy answer to one case, with its logits at every step."""

    prompt_ids: list[int]
    image_tokens: list[int]
    tokens: list[int]  # generated ids, the end-of-answer token included when one was generated
    logits: np.ndarray  # (len(tokens), vocab), vision tokens suppressed (-inf)
    text: str
    finished: bool
    image_embeddings: list[np.ndarray] = field(default_factory=list)  # vision tower output per image
    fixed: FixedAnswer | None = None
    fixed_logits: np.ndarray | None = None  # (len(fixed.tokens), vocab) along the fixed answer


@dataclass(frozen=True)
class FixedAnswer:
    """An answer in the prompt version's format, fed to both models (teacher forcing).

    Row `decision_step` of its logits predicts the first token where the "yes" and the "no"
    answers differ: comparing the logits of `yes_id` and `no_id` there reads the decision.
    """

    tokens: list[int]
    decision_step: int
    yes_id: int
    no_id: int


def fixed_answer(tokenizer: Any, prompt_version: str) -> FixedAnswer:
    """The fixed answer for a prompt version: `format_response`'s yes answer, and where it decides."""
    def ids(decision: bool) -> list[int]:
        text = format_response(decision, [], version=prompt_version)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    yes, no = ids(True), ids(False)
    step = _common_prefix(yes, no)
    if step >= min(len(yes), len(no)):
        raise ExportError("the yes and no answers tokenize alike; cannot read a decision")
    return FixedAnswer(tokens=yes, decision_step=step, yes_id=yes[step], no_id=no[step])


@dataclass
class CaseReport:
    name: str
    prompt_tokens: int
    image_tokens_hf: list[int]
    image_tokens_gguf: list[int]
    prompt_match: bool
    first_prompt_difference: int | None
    compared: int
    agree: int
    prefix: int  # leading free-running tokens equal to HF's
    hf_tokens: int
    gguf_tokens: int
    max_abs_logit_diff: float
    logit_spread: float
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    decision_hf: bool | None = None
    decision_gguf: bool | None = None
    text_hf: str = ""
    text_gguf: str = ""
    vision_relative_error: float = 0.0  # projector output vs HF vision tower, max |Δ| / spread
    kld: list[float] = field(default_factory=list)  # per teacher-forced step, nats
    same_top: list[bool] = field(default_factory=list)  # per teacher-forced step
    forced_decision_hf: bool | None = None  # None: the reference's top token there is neither yes nor no
    forced_decision_gguf: bool | None = None
    margin_hf: float | None = None  # yes − no logit at the fixed answer's decision step
    margin_gguf: float | None = None

    @property
    def relative_logit_error(self) -> float:
        return self.max_abs_logit_diff / self.logit_spread if self.logit_spread > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        return {
            "case": self.name,
            "prompt_tokens": self.prompt_tokens,
            "image_tokens_hf": self.image_tokens_hf,
            "image_tokens_gguf": self.image_tokens_gguf,
            "prompt_match": self.prompt_match,
            "tokens_compared": self.compared,
            "token_agreement": round(self.agree / self.compared, 4) if self.compared else 1.0,
            "free_running_prefix": self.prefix,
            "hf_answer_tokens": self.hf_tokens,
            "gguf_answer_tokens": self.gguf_tokens,
            "max_abs_logit_diff": round(self.max_abs_logit_diff, 6),
            "relative_logit_error": round(self.relative_logit_error, 6),
            "vision_relative_error": round(self.vision_relative_error, 6),
            "mismatches": self.mismatches,
            "decision_hf": self.decision_hf,
            "decision_gguf": self.decision_gguf,
            "forced_decision_hf": self.forced_decision_hf,
            "forced_decision_gguf": self.forced_decision_gguf,
            "decision_margin_hf": None if self.margin_hf is None else round(self.margin_hf, 6),
            "decision_margin_gguf": None if self.margin_gguf is None else round(self.margin_gguf, 6),
            "text_matches_hf": self.text_gguf == self.text_hf,
            "steps_compared": len(self.kld),
            "mean_kld": round(float(np.mean(self.kld)), 6) if self.kld else None,
            "same_top": round(float(np.mean(self.same_top)), 4) if self.same_top else None,
        }


# ----------------------------------------------------------------------------------------------
# fixture images


def _on_grid(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    rgb = image.convert("RGB")
    return ModelGrid.for_image(*rgb.size, min_pixels=min_pixels, max_pixels=max_pixels).resize(rgb)


def default_cases(min_pixels: int, max_pixels: int) -> list[VerifyCase]:
    """Built-in deterministic parts, four normal and four defective, on square, wide and tall grids,
    one of them a reference pair: enough decisions that one near-tie flip does not sink agreement."""
    from PIL import Image as PILImage

    from adfm.synthetic import make_sample

    rng = np.random.default_rng(20250806)

    def part(kind: str, defect: str | None, size: tuple[int, int]) -> Image.Image:
        sample = make_sample(kind, defect, rng, size=size)
        return _on_grid(PILImage.fromarray(sample.image), min_pixels, max_pixels)

    # the first three are the earlier default set, drawn first so their pixels stay the same
    return [
        VerifyCase("washer-normal", (part("washer", None, (256, 256)),), "washer"),
        VerifyCase("tile-scratch-wide", (part("tile", "scratch", (320, 208)),), "tile"),
        VerifyCase("pill-reference-pair", (part("pill", None, (256, 192)), part("pill", "spot", (256, 192))), "pill"),
        VerifyCase("tile-normal-wide", (part("tile", None, (320, 208)),), "tile"),
        VerifyCase("washer-crack-small", (part("washer", "crack", (192, 192)),), "washer"),
        VerifyCase("pill-normal", (part("pill", None, (256, 192)),), "pill"),
        VerifyCase("fabric-missing-tall", (part("fabric", "missing", (208, 320)),), "fabric"),
        VerifyCase("fabric-normal-tall", (part("fabric", None, (208, 320)),), "fabric"),
    ]


def load_cases(paths: Sequence[str | Path], min_pixels: int, max_pixels: int) -> list[VerifyCase]:
    """One single-image case per image file (directories are searched, sorted by name)."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise ExportError(f"verification image not found: {p}")
    if not files:
        raise ExportError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    cases = []
    for f in files:
        try:
            with PILImage.open(f) as img:
                img.load()
                cases.append(VerifyCase(f.name, (_on_grid(img, min_pixels, max_pixels),)))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise ExportError(f"verification image {f}: cannot use it: {exc}") from exc
    return cases


# ----------------------------------------------------------------------------------------------
# the HF side


def hf_run(
    merged: MergedModel,
    case: VerifyCase,
    *,
    prompt_version: str,
    max_new_tokens: int,
    suppress_tokens: Sequence[int],
    device: str = "cpu",
    fixed: FixedAnswer | None = None,
) -> HfRun:
    """Greedy answer of the merged HF model to a case, its prompt ids and per-step logits, and its
    logits along `fixed` (teacher forcing) when given."""
    import torch
    from transformers import GenerationConfig

    processor, model = merged.processor, merged.model
    messages = attach_images(
        build_messages(prompt_version, product=case.product, reference=len(case.images) == 2),
        list(case.images),
    )
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The images are on their grids already: no second resize, identical pixels to llama.cpp's.
    inputs = processor(text=[text], images=list(case.images), return_tensors="pt", do_resize=False).to(device)
    merge = model.config.vision_config.spatial_merge_size
    image_tokens = [int(t * h * w) // (merge * merge) for t, h, w in inputs["image_grid_thw"].tolist()]
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [processor.tokenizer.eos_token_id])
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_ids,
        pad_token_id=processor.tokenizer.pad_token_id,
        suppress_tokens=list(suppress_tokens),
        output_logits=True,
        return_dict_in_generate=True,
    )
    n_prompt = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=config)
        features = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        fixed_logits = None
        if fixed is not None:
            # the prompt's inputs (every per-token one, e.g. mm_token_type_ids, which places the image in
            # the multimodal rope) extended by the answer's text tokens
            extra = torch.tensor([fixed.tokens], device=device)
            forward_inputs = dict(inputs)
            for key, value in inputs.items():
                if key == "input_ids":
                    forward_inputs[key] = torch.cat([value, extra], dim=1)
                elif torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == n_prompt:
                    fill = 1 if key == "attention_mask" else 0
                    forward_inputs[key] = torch.cat([value, torch.full_like(extra, fill, dtype=value.dtype)], dim=1)
            forward = model(**forward_inputs)
            fixed_logits = forward.logits[0, n_prompt - 1 : n_prompt - 1 + len(fixed.tokens)].float().cpu().numpy()
            fixed_logits[:, list(suppress_tokens)] = -np.inf
    tokens = out.sequences[0, n_prompt:].tolist()
    logits = torch.stack(out.logits, dim=1)[0].float().cpu().numpy()
    logits[:, list(suppress_tokens)] = -np.inf
    finished = bool(tokens) and tokens[-1] in eos_ids
    body = tokens[:-1] if finished else tokens
    return HfRun(
        prompt_ids=inputs["input_ids"][0].tolist(),
        image_tokens=image_tokens,
        tokens=tokens,
        logits=logits[: len(tokens)],
        text=processor.tokenizer.decode(body, skip_special_tokens=True),
        finished=finished,
        image_embeddings=[f.float().cpu().numpy() for f in features],
        fixed=fixed,
        fixed_logits=fixed_logits,
    )


# ----------------------------------------------------------------------------------------------
# comparison


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _compare_logits(hf: HfRun, forced: np.ndarray) -> tuple[int, list[dict[str, Any]], float, float]:
    """(agreeing steps, mismatches, max |Δlogit|, HF logit spread) along HF's answer."""
    finite = np.isfinite(hf.logits) & np.isfinite(forced)
    diff = np.zeros_like(hf.logits)
    np.subtract(hf.logits, forced, out=diff, where=finite)
    max_diff = float(np.abs(diff).max()) if diff.size else 0.0
    spread = float(np.std(hf.logits[finite])) if finite.any() else 0.0
    agree, mismatches = 0, []
    for step, token in enumerate(hf.tokens):
        pick = int(np.argmax(forced[step]))
        if pick == token:
            agree += 1
            continue
        margin = float(hf.logits[step, token] - hf.logits[step, pick])
        mismatches.append({
            "step": step, "hf_token": int(token), "gguf_token": pick, "hf_margin": round(margin, 6),
            "near_tie": margin <= TIE_FACTOR * max_diff,
        })
    return agree, mismatches, max_diff, spread


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax over the finite entries (suppressed tokens, -inf, get -inf)."""
    z = logits.astype(np.float64)
    top = np.max(z, axis=-1, keepdims=True)
    return z - top - np.log(np.sum(np.exp(z - top), axis=-1, keepdims=True))


def token_divergence(reference: np.ndarray, other: np.ndarray) -> tuple[list[float], list[bool]]:
    """Per step: KL(reference ‖ other) in nats, and whether both put the same token on top.

    As llama.cpp's `--kl-divergence` reports them. Entries -inf on both sides (suppressed tokens)
    drop out; a non-finite logit on one side only makes that step's divergence infinite.
    """
    if reference.shape != other.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {other.shape}")
    kld, same = [], []
    for ref_row, row in zip(reference, other, strict=True):
        keep = np.isfinite(ref_row) | np.isfinite(row)
        if not (np.isfinite(ref_row[keep]).all() and np.isfinite(row[keep]).all()):
            kld.append(float("inf"))
            same.append(False)
            continue
        lp, lq = _log_softmax(ref_row[keep]), _log_softmax(row[keep])
        kld.append(float(max(0.0, np.sum(np.exp(lp) * (lp - lq)))))
        same.append(bool(np.argmax(ref_row[keep]) == np.argmax(row[keep])))
    return kld, same


def _forced_decision(logits: np.ndarray, fixed: FixedAnswer, need_top: bool) -> bool | None:
    """The decision at the fixed answer's decision step: yes when its logit beats no's.

    With `need_top`, None unless yes or no is the top token there (the model does not decide).
    """
    row = logits[fixed.decision_step]
    if need_top and int(np.argmax(row)) not in (fixed.yes_id, fixed.no_id):
        return None
    return bool(row[fixed.yes_id] > row[fixed.no_id])


def decision_margin(logits: np.ndarray, fixed: FixedAnswer) -> float:
    """yes − no logit at the fixed answer's decision step (positive: yes)."""
    row = logits[fixed.decision_step]
    return float(row[fixed.yes_id] - row[fixed.no_id])


def _vision_error(vlm: GgufVlm, images: Sequence[Image.Image], hf: HfRun) -> float:
    """Largest |projector output − HF vision tower output| over the images, relative to HF's spread."""
    worst = 0.0
    for img, hf_embd in zip(images, hf.image_embeddings, strict=True):
        gguf_embd = vlm.image_embeddings(img)
        if gguf_embd.shape != hf_embd.shape:
            return float("inf")
        worst = max(worst, float(np.abs(gguf_embd - hf_embd).max()) / (float(np.std(hf_embd)) or 1.0))
    return worst


def compare_case(vlm: GgufVlm, hf: HfRun, case: VerifyCase, *, prompt_version: str) -> CaseReport:
    """Run one case through llama.cpp and compare it with the HF run."""
    images = list(case.images)
    run = vlm.forced_logits(images, hf.tokens, prompt_version=prompt_version, product=case.product)
    forced = run.logits.copy()
    forced[:, list(vlm.suppressed_ids)] = -np.inf
    prompt_match = list(run.prompt_token_ids) == hf.prompt_ids
    agree, mismatches, max_diff, spread = _compare_logits(hf, forced)
    kld, same = token_divergence(hf.logits, forced)
    forced_hf = forced_gguf = margin_hf = margin_gguf = None
    if hf.fixed is not None and hf.fixed_logits is not None:
        fixed_run = vlm.forced_logits(images, hf.fixed.tokens, prompt_version=prompt_version, product=case.product)
        fixed_gguf = fixed_run.logits.copy()
        fixed_gguf[:, list(vlm.suppressed_ids)] = -np.inf
        more_kld, more_same = token_divergence(hf.fixed_logits, fixed_gguf)
        kld, same = kld + more_kld, same + more_same
        forced_hf = _forced_decision(hf.fixed_logits, hf.fixed, need_top=True)
        forced_gguf = _forced_decision(fixed_gguf, hf.fixed, need_top=False)
        margin_hf, margin_gguf = decision_margin(hf.fixed_logits, hf.fixed), decision_margin(fixed_gguf, hf.fixed)
    gen = vlm.generate(images, prompt_version=prompt_version, product=case.product,
                       max_tokens=max(1, len(hf.tokens)))
    gguf_tokens = list(gen.token_ids)
    hf_body = hf.tokens[:-1] if hf.finished else hf.tokens
    parsed_hf = parse_response(hf.text, version=prompt_version)
    parsed_gguf = parse_response(gen.text, version=prompt_version)
    return CaseReport(
        name=case.name,
        prompt_tokens=len(hf.prompt_ids),
        image_tokens_hf=hf.image_tokens,
        image_tokens_gguf=list(run.image_tokens),
        prompt_match=prompt_match,
        first_prompt_difference=None if prompt_match else _common_prefix(run.prompt_token_ids, hf.prompt_ids),
        compared=len(hf.tokens),
        agree=agree,
        prefix=_common_prefix(gguf_tokens + ([-1] if gen.finished else []), hf_body + ([-1] if hf.finished else [])),
        hf_tokens=len(hf_body),
        gguf_tokens=len(gguf_tokens),
        max_abs_logit_diff=max_diff,
        logit_spread=spread,
        mismatches=mismatches,
        decision_hf=parsed_hf.decision,
        decision_gguf=parsed_gguf.decision,
        text_hf=hf.text,
        text_gguf=gen.text,
        vision_relative_error=_vision_error(vlm, images, hf),
        kld=kld,
        same_top=same,
        forced_decision_hf=forced_hf,
        forced_decision_gguf=forced_gguf,
        margin_hf=margin_hf,
        margin_gguf=margin_gguf,
    )


@dataclass(frozen=True)
class QuantAllowance:
    """What one quantized file is held to: its type's absolute bound and, within it, the allowance
    relative to the float file of the same model (its measured noise plus the type's expected cost)."""

    max_mean_kld: float  # min(absolute bound, MEAN_COST_FACTOR × expected + FLOAT_NOISE_FACTOR × float mean)
    far_step_kld: float  # STEP_COST_FACTOR × expected + FLOAT_NOISE_FACTOR × the float file's worst step
    max_far_step_share: float
    float_mean_kld: float | None  # None: no float file measured (the noise counts as zero)
    float_max_step_kld: float | None

    def summary(self) -> dict[str, Any]:
        return {
            "max_mean_kld": round(self.max_mean_kld, 6),
            "far_step_kld": round(self.far_step_kld, 6),
            "max_far_step_share": self.max_far_step_share,
            "float_mean_kld": None if self.float_mean_kld is None else round(self.float_mean_kld, 8),
            "float_max_step_kld": None if self.float_max_step_kld is None else round(self.float_max_step_kld, 8),
        }


def quant_allowance(quant: str, reference: GgufCheck | None) -> QuantAllowance | None:
    """The relative allowance of a quantized type (None for float types and unknown ones)."""
    bound, expected = QUANT_BOUNDS.get(quant), EXPECTED_MEAN_KLD.get(quant)
    if bound is None or expected is None:
        return None
    float_mean = reference.mean_kld if reference is not None else None
    float_max = reference.max_step_kld if reference is not None else None
    return QuantAllowance(
        max_mean_kld=min(bound.max_mean_kld, MEAN_COST_FACTOR * expected + FLOAT_NOISE_FACTOR * (float_mean or 0.0)),
        far_step_kld=STEP_COST_FACTOR * expected + FLOAT_NOISE_FACTOR * (float_max or 0.0),
        max_far_step_share=MAX_FAR_STEP_SHARE,
        float_mean_kld=float_mean,
        float_max_step_kld=float_max,
    )


@dataclass
class GgufCheck:
    """The comparison of one GGUF file (float or quantized) with HF over all cases.

    `reference` is the float file's check on the same cases and HF runs: a quantized file is judged
    relative to its noise (KL allowance, near-tie decisions).
    """

    label: str
    float_check: bool
    cases: list[CaseReport]
    agreement_floor: float
    quant: str = "f16"  # the language model's type
    mmproj_type: str = "f16"
    random_weights: bool = False
    reference: GgufCheck | None = None

    @property
    def token_agreement(self) -> float:
        compared = sum(c.compared for c in self.cases)
        return sum(c.agree for c in self.cases) / compared if compared else 1.0

    def float_margin_deviation(self, index: int) -> float | None:
        """How far the float file moved HF's yes−no margin on case `index` (None: not measured)."""
        ref = self.reference
        if ref is None or index >= len(ref.cases):
            return None
        case = ref.cases[index]
        if case.name != self.cases[index].name or case.margin_hf is None or case.margin_gguf is None:
            return None
        return abs(case.margin_gguf - case.margin_hf)

    def near_tie_margin(self, index: int) -> float:
        """HF margins within this (logits) of zero are near ties on case `index`."""
        deviation = self.float_margin_deviation(index)
        return max(NEAR_TIE_FLOOR, TIE_FACTOR * deviation) if deviation is not None else NEAR_TIE_FLOOR

    def _is_near_tie(self, index: int) -> bool:
        c = self.cases[index]
        return c.margin_hf is not None and abs(c.margin_hf) <= self.near_tie_margin(index)

    @property
    def near_tie_cases(self) -> list[CaseReport]:
        """Cases where the reference decides, but by a margin within the float noise (or its floor):
        reported, not counted for or against decision agreement."""
        return [c for i, c in enumerate(self.cases) if c.forced_decision_hf is not None and self._is_near_tie(i)]

    @property
    def deciding_cases(self) -> list[CaseReport]:
        """Cases where the reference decides clearly: its top token at the fixed answer's decision step
        is yes or no, by a margin beyond the near-tie margin. Only these count towards decision agreement."""
        return [c for i, c in enumerate(self.cases) if c.forced_decision_hf is not None and not self._is_near_tie(i)]

    @property
    def decision_agreement(self) -> float | None:
        """Share of deciding cases where both decide alike; None when the reference decides nowhere."""
        cases = self.deciding_cases
        if not cases:
            return None
        return sum(c.forced_decision_hf == c.forced_decision_gguf for c in cases) / len(cases)

    @property
    def step_klds(self) -> list[float]:
        return [k for c in self.cases for k in c.kld]

    @property
    def mean_kld(self) -> float:
        steps = self.step_klds
        return float(np.mean(steps)) if steps else 0.0

    @property
    def max_step_kld(self) -> float:
        steps = self.step_klds
        return float(np.max(steps)) if steps else 0.0

    @property
    def same_top(self) -> float:
        steps = [s for c in self.cases for s in c.same_top]
        return float(np.mean(steps)) if steps else 1.0

    @property
    def bound(self) -> QuantBound | None:
        """The language model's absolute bound (None for float types)."""
        return QUANT_BOUNDS.get(self.quant)

    @property
    def allowance(self) -> QuantAllowance | None:
        """The language model's allowance relative to the float file (None for float types)."""
        return None if self.float_check else quant_allowance(self.quant, self.reference)

    def far_step_share(self) -> float:
        """Share of teacher-forced steps whose KL exceeds the allowance's far-step KL."""
        allowance, steps = self.allowance, self.step_klds
        if allowance is None or not steps:
            return 0.0
        return float(np.mean([not k <= allowance.far_step_kld for k in steps]))

    @property
    def vision_bound(self) -> float:
        return FLOAT_MAX_RELATIVE_VISION_ERROR if self.mmproj_type == "f16" else QUANT_MAX_RELATIVE_VISION_ERROR

    def notes(self) -> list[str]:
        """What the check did not hold the file to, and why."""
        out = []
        if not self.float_check and self.random_weights:
            out.append(
                f"{self.label}: random-weight model: quantized bounds (KL divergence, same top token, decision "
                "agreement) not applied; its near-flat logits say nothing about quantization quality"
            )
        if not self.float_check and self.bound is not None and self.reference is None:
            out.append(f"{self.label}: no float file measured; the KL allowance assumes no float noise")
        if not self.float_check:
            for i, c in enumerate(self.cases):
                if c.forced_decision_hf is not None and self._is_near_tie(i):
                    out.append(
                        f"{c.name}: near tie (HF's yes−no margin {c.margin_hf:+.3f} within "
                        f"±{self.near_tie_margin(i):.3f}); {self.label} margin {c.margin_gguf:+.3f}, "
                        "not counted for decision agreement"
                    )
        if not self.float_check and not self.deciding_cases:
            out.append(f"{self.label}: the reference decides clearly in none of the {len(self.cases)} cases; "
                       "no decision agreement measured")
        return out

    def problems(self) -> list[str]:
        """Why this file fails verification (empty when it passes)."""
        out = []
        for c in self.cases:
            if not c.prompt_match:
                out.append(
                    f"{c.name}: llama.cpp's prompt differs from HF's at token {c.first_prompt_difference} "
                    "(tokenizer or chat template mismatch)"
                )
            if c.image_tokens_hf != c.image_tokens_gguf:
                out.append(
                    f"{c.name}: visual tokens per image HF {c.image_tokens_hf} vs llama.cpp "
                    f"{c.image_tokens_gguf}: the image was resized again"
                )
            if self.float_check:
                if c.vision_relative_error > FLOAT_MAX_RELATIVE_VISION_ERROR:
                    out.append(
                        f"{c.name}: the projector's image embeddings differ from HF's vision tower by "
                        f"{c.vision_relative_error:.1%} of their spread (limit {FLOAT_MAX_RELATIVE_VISION_ERROR:.0%}): "
                        "the mmproj conversion is wrong"
                    )
                if c.relative_logit_error > FLOAT_MAX_RELATIVE_LOGIT_ERROR:
                    out.append(
                        f"{c.name}: logits differ from HF by {c.max_abs_logit_diff:.4g} "
                        f"({c.relative_logit_error:.1%} of their spread, limit "
                        f"{FLOAT_MAX_RELATIVE_LOGIT_ERROR:.0%}): the conversion is wrong"
                    )
                real = [m for m in c.mismatches if not m["near_tie"]]
                if real:
                    out.append(f"{c.name}: top token differs from HF beyond float rounding at {real[:3]}")
        if not self.float_check:
            worst = max(self.cases, key=lambda c: c.vision_relative_error)
            if worst.vision_relative_error > self.vision_bound:
                out.append(
                    f"{worst.name}: the {self.mmproj_type} projector's image embeddings differ from HF's vision tower "
                    f"by {worst.vision_relative_error:.1%} of their spread (limit {self.vision_bound:.0%})"
                )
            bound, allowance = self.bound, self.allowance
            if bound is not None and allowance is not None and not self.random_weights:
                if not self.mean_kld <= allowance.max_mean_kld:
                    out.append(
                        f"{self.label}: mean KL divergence from HF {self.mean_kld:.4g} nats/token exceeds the "
                        f"{self.quant} allowance {allowance.max_mean_kld:.4g} (absolute bound {bound.max_mean_kld:g}; "
                        f"float file {allowance.float_mean_kld or 0.0:.3g})"
                    )
                share = self.far_step_share()
                if share > allowance.max_far_step_share:
                    out.append(
                        f"{self.label}: {share:.1%} of steps have a KL divergence above {allowance.far_step_kld:.3g} "
                        f"nats (the {self.quant} limit is {allowance.max_far_step_share:.0%} of steps; worst step "
                        f"{self.max_step_kld:.3g})"
                    )
                if self.same_top < bound.min_same_top:
                    out.append(
                        f"{self.label}: same top token as HF at {self.same_top:.1%} of steps, below the "
                        f"{self.quant} bound {bound.min_same_top:.0%}"
                    )
            agreement = self.decision_agreement
            if agreement is not None and not self.random_weights and agreement < self.agreement_floor:
                out.append(
                    f"{self.label}: decision agreement {agreement:.1%} over the {len(self.deciding_cases)} cases "
                    f"where HF decides clearly is below the floor {self.agreement_floor:.0%}"
                )
        return out

    def summary(self) -> dict[str, Any]:
        bound, allowance = self.bound, self.allowance
        agreement = self.decision_agreement
        return {
            "pair": self.label,
            "kind": "float parity" if self.float_check else "quantized bounds",
            "quant": self.quant,
            "mmproj_type": self.mmproj_type,
            "random_weights": self.random_weights,
            "token_agreement": round(self.token_agreement, 4),
            "mean_kld": round(self.mean_kld, 6),
            "max_step_kld": round(self.max_step_kld, 6),
            "far_step_share": round(self.far_step_share(), 4),
            "same_top": round(self.same_top, 4),
            "steps_compared": sum(len(c.kld) for c in self.cases),
            "bounds": None if self.float_check or bound is None else {
                "max_mean_kld": bound.max_mean_kld, "min_same_top": bound.min_same_top,
                "applied": not self.random_weights,
            },
            "relative_bounds": None if allowance is None else {
                **allowance.summary(), "applied": not self.random_weights,
            },
            "vision_bound": self.vision_bound,
            "decision_agreement": None if agreement is None else round(agreement, 4),
            "deciding_cases": len(self.deciding_cases),
            "near_tie_cases": [
                {"case": c.name, "margin_hf": round(c.margin_hf or 0.0, 6),
                 "margin_gguf": round(c.margin_gguf or 0.0, 6),
                 "near_tie_margin": round(self.near_tie_margin(i), 6),
                 "agree": c.forced_decision_hf == c.forced_decision_gguf}
                for i, c in enumerate(self.cases) if c.forced_decision_hf is not None and self._is_near_tie(i)
            ],
            "decisions_read_hf": sum(c.decision_hf is not None for c in self.cases),
            "greedy_text_matches_hf": sum(c.text_gguf == c.text_hf for c in self.cases),
            "min_free_running_prefix": min(c.prefix for c in self.cases),
            "max_relative_logit_error": round(max(c.relative_logit_error for c in self.cases), 6),
            "max_vision_relative_error": round(max(c.vision_relative_error for c in self.cases), 6),
            "agreement_floor": None if self.float_check else self.agreement_floor,
            "cases": [c.summary() for c in self.cases],
            "notes": self.notes(),
            "passed": not self.problems(),
        }


def tokenizer_mismatch(vlm: GgufVlm, tokenizer: Any, text: str = TOKENIZER_PROBE) -> str | None:
    """None when llama.cpp tokenizes `text` exactly as the HF tokenizer; else where they part."""
    hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    gguf_ids = vlm.tokenize(text)
    if list(gguf_ids) == list(hf_ids):
        return None
    at = _common_prefix(gguf_ids, hf_ids)
    return (
        f"llama.cpp tokenizes text differently from HF from token {at} "
        f"({tokenizer.decode(hf_ids[at:at + 3])!r}): the GGUF's tokenizer/pre-tokenizer does not match"
    )


def check_gguf(
    vlm: GgufVlm,
    hf_runs: Sequence[HfRun],
    cases: Sequence[VerifyCase],
    *,
    label: str,
    float_check: bool,
    prompt_version: str,
    agreement_floor: float,
    quant: str = "f16",
    mmproj_type: str = "f16",
    random_weights: bool = False,
    reference: GgufCheck | None = None,
) -> GgufCheck:
    """Compare one GGUF pair with HF over the cases; `reference` is the float file's check on the
    same runs, the noise floor a quantized file is judged against."""
    reports = [
        compare_case(vlm, hf, case, prompt_version=prompt_version)
        for hf, case in zip(hf_runs, cases, strict=True)
    ]
    return GgufCheck(label=label, float_check=float_check, cases=reports, agreement_floor=agreement_floor,
                     quant=quant, mmproj_type=mmproj_type, random_weights=random_weights, reference=reference)
