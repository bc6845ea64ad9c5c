"""A tiny Qwen2.5-VL with trained weights: the tiny random model taught to answer in adfm's format.

Random weights give near-flat logits, so quantization flips near-ties everywhere and says nothing
about how a quantized file keeps a trained model's answers. This model is the tiny random
checkpoint fine-tuned (language model only, vision tower frozen) on the export verification's own
fixture parts (the eight built-in cases) until it answers in `format_response`'s format, with
peaked logits the way a trained model's are, so the export's quantized bounds apply to it: tests
and `bench/export_bounds.py` use it to check that a good quantized file passes and a corrupted one
fails. Its vision tower stays random, so it tells the parts apart by their grid size rather than
their pixels: after 240 steps it decides two of the eight cases clearly and leaves six near a tie
(yes−no margin within ±0.25), which the near-tie handling of the verification meets too; blends of
a case's image with other pixels do not move its margin. (360 steps decide all eight by size, with
no near tie left.) Built offline in about a minute on two cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: Written beside the weights (also marks the checkpoint as not random-weight).
MARKER = "adfm_tiny.json"


def build_tiny_trained(
    out_dir: str | Path,
    base_dir: str | Path | None = None,
    *,
    steps: int = 240,
    learning_rate: float = 2e-3,
    prompt_version: str = "multi-stage-v1",
    seed: int = 0,
    n_cases: int | None = None,
) -> Path:
    """Fine-tune the tiny model at `base_dir` (built when None) and save it at `out_dir`.

    `n_cases` trains on the first n default cases only (3 and 40 steps: the model of the earlier,
    three-fixture verification, which bench/export_bounds.py keeps for a before/after table).
    An `out_dir` already holding this model (same settings) is returned as is.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from adfm.protocol import attach_images, build_messages, format_response

    from .verify import default_cases

    out = Path(out_dir)
    settings = {"steps": steps, "learning_rate": learning_rate, "prompt_version": prompt_version, "seed": seed}
    if n_cases is not None:
        settings["cases"] = n_cases
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("trained") == settings:
        return out
    if base_dir is None:
        from adfm.trainer.tiny_model import build_tiny_qwen25vl

        base = build_tiny_qwen25vl(out.with_name(out.name + "-random"), seed=seed)
    else:
        base = Path(base_dir)
    tiny = json.loads((base / MARKER).read_text())
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)

    processor = AutoProcessor.from_pretrained(str(out), local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32, local_files_only=True)
    for name, param in model.named_parameters():
        param.requires_grad = "visual" not in name
    examples = []
    for case in default_cases(tiny["min_pixels"], tiny["max_pixels"])[:n_cases]:
        images = list(case.images)
        messages = attach_images(
            build_messages(prompt_version, product=case.product, reference=len(images) == 2), images
        )
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        answer = format_response("normal" not in case.name, [], version=prompt_version) + "<|im_end|>"
        inputs = processor(text=[prompt + answer], images=images, return_tensors="pt", do_resize=False)
        n_prompt = processor(text=[prompt], images=images, return_tensors="pt", do_resize=False)["input_ids"].shape[1]
        labels = inputs["input_ids"].clone()
        labels[:, :n_prompt] = -100
        examples.append((inputs, labels))

    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model.train()
    losses = []
    for step in range(steps):
        inputs, labels = examples[step % len(examples)]
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    marker.write_text(json.dumps({
        **tiny, "kind": "adfm-tiny-qwen25vl-trained", "random_weights": False, "trained": settings,
        "final_losses": [round(v, 4) for v in losses[-len(examples):]],
    }, indent=2))
    return out
