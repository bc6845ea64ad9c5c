"""Prefix reuse in `GgufVlm`: the system prompt and reference image stay in the KV cache between
parts, and the answers are token for token those of a fresh evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.needs_llama, pytest.mark.needs_torch]


def _part(seed: int, defect: str | None) -> Image.Image:
    from adfm.synthetic import make_sample

    return Image.fromarray(make_sample("washer", defect, np.random.default_rng(seed), size=(224, 196)).image)


@pytest.fixture(scope="module")
def models(tiny_gguf_dir: Path):
    from adfm.runtime.vlm import GgufVlm

    with GgufVlm(tiny_gguf_dir, n_ctx=2048) as reusing, GgufVlm(tiny_gguf_dir, n_ctx=2048, reuse_prefix=False) as fresh:
        yield reusing, fresh


def _grid(vlm, image: Image.Image) -> Image.Image:
    return vlm.grid_for(*image.size).resize(image)


def test_greedy_answers_with_a_reference_equal_the_fresh_path(models) -> None:
    reusing, fresh = models
    reference = _grid(reusing, _part(100, None))
    reused_counts = []
    for seed, defect in [(1, "spot"), (2, None), (3, "scratch"), (4, None)]:
        query = _grid(reusing, _part(seed, defect))
        a = reusing.generate([reference, query], product="washer", max_tokens=24)
        b = fresh.generate([reference, query], product="washer", max_tokens=24)
        assert a.token_ids == b.token_ids and a.text == b.text
        assert a.prompt_tokens == b.prompt_tokens and a.image_tokens == b.image_tokens
        assert b.prefix_reused == 0
        reused_counts.append(a.prefix_reused)
    assert reused_counts[0] == 0  # the first part evaluates the prefix
    assert len(set(reused_counts[1:])) == 1 and reused_counts[1] > 0  # later parts take it from the cache
    # the kept prefix holds the reference image: more positions than the system prompt alone
    query = _grid(reusing, _part(5, None))
    reusing.generate([query], product="washer", max_tokens=2)
    text_only = reusing.generate([query], product="washer", max_tokens=2).prefix_reused
    assert 0 < text_only < reused_counts[1]


def test_a_new_reference_is_evaluated_again(models) -> None:
    reusing, fresh = models
    query = _grid(reusing, _part(7, "spot"))
    ref_a, ref_b = _grid(reusing, _part(200, None)), _grid(reusing, _part(201, None))
    reusing.generate([ref_a, query], product="washer", max_tokens=4)
    changed = reusing.generate([ref_b, query], product="washer", max_tokens=16)
    assert changed.prefix_reused == 0
    assert changed.token_ids == fresh.generate([ref_b, query], product="washer", max_tokens=16).token_ids
    # the product name comes after the images: the kept prefix still serves, and answers still match
    other_product = reusing.generate([ref_b, query], product="tile", max_tokens=16)
    assert other_product.token_ids == fresh.generate([ref_b, query], product="tile", max_tokens=16).token_ids


def test_without_a_reference_the_system_prompt_is_kept(models) -> None:
    reusing, fresh = models
    first = reusing.generate([_grid(reusing, _part(11, None))], product="washer", max_tokens=8)
    second_query = _grid(reusing, _part(12, "crack"))
    second = reusing.generate([second_query], product="washer", max_tokens=16)
    assert second.prefix_reused > 0 and first.prompt_tokens == second.prompt_tokens
    assert second.token_ids == fresh.generate([second_query], product="washer", max_tokens=16).token_ids


def test_stage_times_account_for_the_part_and_skip_the_reused_prefix(models) -> None:
    reusing, fresh = models
    reference, query = _grid(reusing, _part(300, None)), _grid(reusing, _part(301, "spot"))
    gens = [vlm.generate([reference, query], product="washer", max_tokens=8) for vlm in (fresh, reusing, reusing)]
    for gen in gens:
        stages = gen.vision_seconds + gen.prefill_seconds + gen.generate_seconds
        assert gen.vision_seconds > 0 and gen.prefill_seconds > 0 and gen.generate_seconds > 0
        assert stages <= gen.seconds  # the rest is tokenizing the prompt and PNG-wrapping the images
    fresh_gen, _, reused_gen = gens
    assert reused_gen.prefix_reused > 0 and fresh_gen.prefix_tokens_reused == 0
    # the kept prefix holds the reference's visual tokens and the text before the query
    reference_tokens = reused_gen.image_tokens[0]
    assert reference_tokens < reused_gen.prefix_tokens_reused < reused_gen.prompt_tokens - reused_gen.image_tokens[1]
    # one image encoded instead of two: the reference's encoder time is gone
    assert reused_gen.vision_seconds < 0.8 * fresh_gen.vision_seconds
