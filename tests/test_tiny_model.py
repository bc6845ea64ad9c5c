"""The tiny Qwen2.5-VL: builds offline, loads with the Auto classes, generates on an image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adfm.geometry import ModelGrid
from adfm.protocol import VISION_SPECIAL_TOKENS, attach_images, build_messages, parse_response
from adfm.synthetic import make_sample
from adfm.trainer.modeling import vision_token_ids
from adfm.trainer.tiny_model import SPECIAL_TOKENS
from tests.conftest import needs_torch

pytestmark = [needs_torch, pytest.mark.slow]


def test_checkpoint_files_and_config(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl"
    assert cfg["text_config"]["hidden_size"] % 256 == 0
    names = {p.name for p in tiny_model_dir.iterdir()}
    for f in ("model.safetensors", "tokenizer.json", "processor_config.json", "generation_config.json",
              "chat_template.jinja"):
        assert f in names, f


def test_tokenizer_has_qwen_special_tokens_and_template(tiny_model_dir):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    tok = proc.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and all(i is not None and i >= 0 for i in ids)
    # special tokens are single tokens, never split by BPE
    assert tok.encode("<|im_start|>user", add_special_tokens=False)[0] == tok.convert_tokens_to_ids("<|im_start|>")
    text = proc.apply_chat_template(build_messages(product="washer"), add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    # byte-level BPE round trips arbitrary text
    s = "Prüfe Teil #42: 3 Kratzer, 0.5 mm — ok?"
    assert tok.decode(tok.encode(s, add_special_tokens=False)) == s
    assert len(vision_token_ids(tok)) == len(VISION_SPECIAL_TOKENS)


def test_load_and_generate_on_an_image(tiny_model_dir):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    s = make_sample("washer", "scratch", np.random.default_rng(0))
    img = Image.fromarray(s.image)
    size = proc.image_processor.size
    grid = ModelGrid.for_image(*img.size, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    msgs = attach_images(build_messages(product="washer"), [grid.resize(img)])
    inputs = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                      return_tensors="pt")
    # the processor keeps our pre-resized grid: (grid h / 14) × (grid w / 14) patches
    assert inputs["image_grid_thw"].tolist() == [[1, grid.height // 14, grid.width // 14]]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False,
                             suppress_tokens=vision_token_ids(proc.tokenizer))
    new = out[0, inputs["input_ids"].shape[1]:]
    assert 0 < len(new) <= 12
    assert not set(new.tolist()) & set(vision_token_ids(proc.tokenizer))
    parsed = parse_response(proc.tokenizer.decode(new), grid)  # random weights: unreadable but parsed
    assert parsed.decision is None and not parsed.format_ok


def test_same_seed_same_weights(tmp_path):
    from safetensors.numpy import load_file

    from adfm.trainer.tiny_model import build_tiny_qwen25vl

    a = load_file(build_tiny_qwen25vl(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_qwen25vl(tmp_path / "b", seed=3) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
