"""`adfm.runtime.vlm.GgufVlm` on the tiny exported model: answers, counts, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adfm.manifest import ManifestError

pytestmark = [pytest.mark.slow, pytest.mark.needs_llama, pytest.mark.needs_torch]


@pytest.fixture(scope="module")
def vlm(tiny_gguf_dir: Path):
    from adfm.runtime.vlm import GgufVlm

    with GgufVlm(tiny_gguf_dir, n_ctx=2048) as model:
        yield model


def _part(seed: int, size: tuple[int, int]) -> Image.Image:
    from adfm.synthetic import make_sample

    sample = make_sample("washer", "spot" if seed % 2 else None, np.random.default_rng(seed), size=size)
    return Image.fromarray(sample.image)


def test_answers_an_image_query_with_exact_counts(vlm) -> None:
    original = _part(1, (300, 200))
    grid = vlm.grid_for(*original.size)
    assert (grid.width % 28, grid.height % 28) == (0, 0)
    assert vlm.manifest.min_pixels <= grid.width * grid.height <= vlm.manifest.max_pixels
    gen = vlm.generate([grid.resize(original)], product="washer", max_tokens=12)
    assert isinstance(gen.text, str)
    assert 1 <= gen.completion_tokens <= 12 and gen.completion_tokens == len(gen.token_ids)
    assert gen.image_tokens == ((grid.width // 28) * (grid.height // 28),)
    assert gen.prompt_tokens > gen.image_tokens[0]
    assert gen.seconds > 0
    assert gen.finished or gen.completion_tokens == 12
    assert not set(gen.token_ids) & set(vlm.suppressed_ids)


def test_greedy_is_deterministic_and_sampling_follows_the_seed(vlm) -> None:
    image = vlm.grid_for(224, 224).resize(_part(2, (224, 224)))
    a = vlm.generate([image], max_tokens=8)
    b = vlm.generate([image], max_tokens=8)
    assert a.token_ids == b.token_ids
    s1 = vlm.generate([image], max_tokens=8, temperature=1.5, seed=7)
    s2 = vlm.generate([image], max_tokens=8, temperature=1.5, seed=7)
    assert s1.token_ids == s2.token_ids


def test_reference_pair_prompt_uses_both_images(vlm) -> None:
    ref = vlm.grid_for(256, 192).resize(_part(4, (256, 192)))
    query = vlm.grid_for(256, 192).resize(_part(5, (256, 192)))
    single = vlm.generate([query], max_tokens=2)
    pair = vlm.generate([ref, query], product="washer", max_tokens=2)
    assert pair.image_tokens == (single.image_tokens[0], single.image_tokens[0])
    assert pair.prompt_tokens > single.prompt_tokens + single.image_tokens[0]


def test_refuses_images_off_the_grid_or_budget(vlm) -> None:
    with pytest.raises(ValueError, match="not on the model grid"):
        vlm.generate([_part(1, (300, 200))], max_tokens=1)
    with pytest.raises(ValueError, match="pixel budget"):
        vlm.generate([Image.new("RGB", (28 * 20, 28 * 20))], max_tokens=1)
    with pytest.raises(ValueError, match="1 image"):
        vlm.generate([], max_tokens=1)
    with pytest.raises(ValueError, match="max_tokens"):
        vlm.generate([Image.new("RGB", (224, 224))], max_tokens=0)


def test_refuses_a_prompt_beyond_the_context(vlm) -> None:
    with pytest.raises(ValueError, match="exceed the context"):
        vlm.generate([Image.new("RGB", (224, 224))], max_tokens=5000)


def test_refuses_a_directory_whose_files_do_not_match(tiny_gguf_dir: Path, tmp_path: Path) -> None:
    from adfm.runtime.vlm import GgufVlm

    copy = tmp_path / "model"
    shutil.copytree(tiny_gguf_dir, copy)
    mmproj = copy / "mmproj-f16.gguf"
    data = bytearray(mmproj.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    mmproj.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        GgufVlm(copy)
    (copy / "model-q4_k_m.gguf").unlink()
    with pytest.raises(ManifestError, match="missing"):
        GgufVlm(copy)
    with pytest.raises(ManifestError, match="not found"):
        GgufVlm(tmp_path / "nowhere")


def test_non_rgb_images_are_read_as_the_hf_processor_reads_them(vlm) -> None:
    image = vlm.grid_for(224, 224).resize(_part(6, (224, 224)))
    rgb = vlm.generate([image], max_tokens=4)
    opaque = vlm.generate([image.convert("RGBA")], max_tokens=4)
    assert opaque.token_ids == rgb.token_ids
