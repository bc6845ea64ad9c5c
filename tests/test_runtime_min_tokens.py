"""`GgufVlm(min_tokens=N)`: answers of a fixed length for benchmarks (random weights stop at random),
the same answer as without it up to where the model would have stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.needs_llama, pytest.mark.needs_torch]

LENGTH = 48


@pytest.fixture(scope="module")
def models(tiny_gguf_dir: Path):
    from adfm.runtime.vlm import GgufVlm

    with GgufVlm(tiny_gguf_dir, n_ctx=2048) as free, GgufVlm(tiny_gguf_dir, n_ctx=2048, min_tokens=LENGTH) as fixed:
        yield free, fixed


def _query(vlm) -> Image.Image:
    from adfm.synthetic import make_sample

    image = Image.fromarray(make_sample("washer", "spot", np.random.default_rng(1), size=(224, 196)).image)
    return vlm.grid_for(*image.size).resize(image)


def test_an_answer_that_would_stop_early_runs_to_the_fixed_length(models) -> None:
    free, fixed = models
    query = _query(free)
    # the tiny model's greedy answer does not stop; sampled hot, some seeds end early
    early = [(seed, gen) for seed in range(20)
             if (gen := free.generate([query], max_tokens=LENGTH, temperature=3.0, seed=seed)).finished]
    assert early, "no sampled answer ended early: the test cannot show the suppression"
    for seed, gen in early[:3]:
        forced = fixed.generate([query], max_tokens=LENGTH, temperature=3.0, seed=seed)
        assert gen.completion_tokens < LENGTH
        assert forced.completion_tokens == LENGTH and not forced.finished
        assert forced.token_ids[: gen.completion_tokens] == gen.token_ids  # identical until the stop
        assert not any(fixed._is_eog(t) for t in forced.token_ids)


def test_greedy_answers_of_the_full_length_are_unchanged(models) -> None:
    free, fixed = models
    query = _query(free)
    a, b = free.generate([query], max_tokens=24), fixed.generate([query], max_tokens=24)
    assert a.token_ids == b.token_ids and a.completion_tokens == b.completion_tokens == 24


def test_a_negative_min_tokens_is_refused(tiny_gguf_dir: Path) -> None:
    from adfm.runtime.vlm import GgufVlm

    with pytest.raises(ValueError, match="min_tokens"):
        GgufVlm(tiny_gguf_dir, min_tokens=-1)
