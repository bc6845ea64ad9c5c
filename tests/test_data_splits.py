"""The paper's splits: 20/80 per category, reproducible by seed, references, cross-dataset, caching."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from adfm.synthetic import make_synthetic_dataset
from adfm.trainer.data import DatasetSource, Sample, SplitConfig, assign_references, make_split, read_manifest
from adfm.trainer.data.cli import main
from adfm.trainer.data.references import image_features, rank_similar, ssim
from adfm.trainer.data.splits import label_quotas, stratified_draw

SIZE = (80, 80)
FOUR = ("mvtec", "visa", "mpdd", "mvtec_loco")
CROSS_TARGETS = ("visa", "mpdd", "dtd", "dagm")


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("four")
    # 7 train + 4 good + 3×2 defects = 17 images per category: 20% = 3.4, never a round number
    return {
        name: make_synthetic_dataset(base / name, layout=name, n_train=7, n_test_good=4, n_test_defect=3,
                                     size=SIZE, seed=11)
        for name in (*FOUR, "dtd", "dagm")
    }


@pytest.fixture(scope="module")
def split_a(four, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split-a")
    code = main(["split", "--protocol", "multi-domain", *[a for n in FOUR for a in ("--dataset", str(four[n]))],
                 "--out", str(out), "--seed", "7", "--quiet", "--workers", "2"])
    assert code == 0
    return out


def test_multi_domain_is_20_80_per_category(split_a, four):
    train, test = read_manifest(split_a / "train.jsonl"), read_manifest(split_a / "test.jsonl")
    assert {s.split for s in train} == {"train"} and {s.split for s in test} == {"test"}
    assert not {s.id for s in train} & {s.id for s in test}
    n_train = Counter((s.dataset, s.category) for s in train)
    n_test = Counter((s.dataset, s.category) for s in test)
    assert len(n_train) == 2 * len(FOUR)  # two categories per dataset, all present
    for key in n_train | n_test:
        total = n_train[key] + n_test[key]
        assert total == 17
        assert abs(n_train[key] - 0.2 * total) <= 1, key
    for (dataset, cat, label), n in Counter((s.dataset, s.category, s.label) for s in train).items():
        pool = sum(1 for s in train + test if (s.dataset, s.category, s.label) == (dataset, cat, label))
        assert abs(n - 0.2 * pool) < 1, (dataset, cat, label)
    # every image of every dataset is in exactly one manifest
    assert len(train) + len(test) == 17 * 2 * len(FOUR)


def test_same_seed_same_files_different_seed_different_draw(split_a, four, tmp_path):
    reordered = [a for n in reversed(FOUR) for a in ("--dataset", str(four[n]))]
    out_b = tmp_path / "b"
    assert main(["split", "--protocol", "multi-domain", *reordered, "--out", str(out_b), "--seed", "7",
                 "--quiet", "--workers", "1"]) == 0
    for name in ("train.jsonl", "test.jsonl"):
        assert (split_a / name).read_bytes() == (out_b / name).read_bytes()
    out_c = tmp_path / "c"
    assert main(["split", "--protocol", "multi-domain", *reordered, "--out", str(out_c), "--seed", "8",
                 "--quiet"]) == 0
    ids_a = {s.id for s in read_manifest(split_a / "train.jsonl")}
    ids_c = {s.id for s in read_manifest(out_c / "train.jsonl")}
    assert ids_a != ids_c and len(ids_a) == len(ids_c)


def test_references_are_normal_training_images_of_the_same_category(split_a):
    train, test = read_manifest(split_a / "train.jsonl"), read_manifest(split_a / "test.jsonl")
    train_normals = {s.image: s for s in train if not s.anomalous}
    for s in train + test:
        assert s.reference is not None, s.id
        ref = train_normals[s.reference]
        assert (ref.dataset, ref.category) == (s.dataset, s.category)
        assert s.reference != s.image


def test_manifest_boxes_and_summary(split_a):
    samples = read_manifest(split_a / "train.jsonl") + read_manifest(split_a / "test.jsonl")
    for s in samples:
        assert s.width == SIZE[0] and s.height == SIZE[1]
        assert (s.boxes == []) == (not s.anomalous)
        assert all(0 <= x1 < x2 <= SIZE[0] and 0 <= y1 < y2 <= SIZE[1] for x1, y1, x2, y2 in s.boxes or [])
    summary = json.loads((split_a / "split.json").read_text())
    assert summary["protocol"] == "multi-domain" and summary["seed"] == 7
    assert summary["box_config"] == {"kernel_size": None, "min_area": 4}
    assert summary["excluded"] == [] and summary["reference_warnings"] == []
    assert sum(c["normal"] + c["anomalous"] for d in summary["counts"]["train"].values() for c in d.values()) \
        == len(read_manifest(split_a / "train.jsonl"))


def test_rerun_recomputes_nothing_and_a_changed_mask_only_itself(four, tmp_path):
    out = tmp_path / "cached"
    sources = [DatasetSource(four["mvtec"])]
    logs: list[str] = []
    make_split(sources, SplitConfig(seed=2), out_dir=out, workers=1, log=logs.append)
    first = (out / "test.jsonl").read_bytes() + (out / "train.jsonl").read_bytes()
    logs.clear()
    make_split(sources, SplitConfig(seed=2), out_dir=out, workers=1, log=logs.append)
    assert any(line.endswith(" 0 misses") for line in logs), logs
    assert (out / "test.jsonl").read_bytes() + (out / "train.jsonl").read_bytes() == first
    # edit one mask: its size check and boxes are recomputed, nothing else
    mask_path = next((four["mvtec"] / "washer" / "ground_truth").rglob("*_mask.png"))
    original = mask_path.read_bytes()
    try:
        m = np.zeros(SIZE[::-1], np.uint8)
        m[5:9, 5:9] = 255
        Image.fromarray(m).save(mask_path)
        logs.clear()
        result = make_split(sources, SplitConfig(seed=2), out_dir=out, workers=1, log=logs.append)
        misses = next(line for line in logs if line.startswith("cache:"))
        assert misses.endswith(" 1 misses"), misses
        edited = [s for s in result.train + result.test if str(mask_path) in s.masks]
        assert edited[0].boxes == [[5.0, 5.0, 9.0, 9.0]]
    finally:
        mask_path.write_bytes(original)


def test_cross_dataset_trains_on_mvtec_and_tests_native_test_splits(four, tmp_path):
    out = tmp_path / "cross"
    args = ["split", "--protocol", "cross-dataset", "--out", str(out), "--seed", "3", "--quiet",
            "--reference", "random"]
    for name in ("mvtec", *CROSS_TARGETS):
        args += ["--dataset", str(four[name])]
    assert main(args) == 0
    train, test = read_manifest(out / "train.jsonl"), read_manifest(out / "test.jsonl")
    assert {s.dataset for s in train} == {"mvtec"}
    assert Counter(s.category for s in train) == {"washer": 3, "tile": 3}  # round(0.2 × 17)
    assert {s.dataset for s in test} == set(CROSS_TARGETS)
    assert all(s.extra["native_split"] == "test" for s in test)
    per_dataset = Counter(s.dataset for s in test)
    # native test splits: good + defects per category; synthetic DAGM keeps 1 defect per kind in Train
    assert per_dataset == {"visa": 2 * (4 + 6), "mpdd": 2 * (4 + 6), "dtd": 2 * (4 + 6), "dagm": 2 * (4 + 4)}
    train_dirs = {"visa": "/Data/Images/Normal/", "mpdd": "/train/good/", "dtd": "/train/good/", "dagm": "/Train/"}
    for s in test:  # references: native training normals of the same dataset and category
        assert s.reference and f"/{s.category}/" in s.reference and train_dirs[s.dataset] in s.reference


def test_cross_dataset_needs_the_source(four, tmp_path, capsys):
    code = main(["split", "--protocol", "cross-dataset", "--dataset", str(four["visa"]), "--dataset",
                 str(four["mpdd"]), "--out", str(tmp_path / "x"), "--quiet"])
    assert code == 2 and "source dataset 'mvtec'" in capsys.readouterr().err


def test_random_references_are_seeded_per_query():
    pool = [_sample(f"/p/{i}.png", "normal", "train") for i in range(20)]
    queries = [_sample(f"/q/{i}.png", "anomalous", "test") for i in range(10)]
    a, _ = assign_references(queries, pool, mode="random", seed=1)
    b, _ = assign_references(list(reversed(queries)), pool, mode="random", seed=1)
    c, _ = assign_references(queries, pool, mode="random", seed=2)
    assert {s.id: s.reference for s in a} == {s.id: s.reference for s in b}
    assert [s.reference for s in a] != [s.reference for s in c]
    none, _ = assign_references(queries, pool, mode="none")
    assert all(s.reference is None for s in none)


def test_similar_reference_prefers_the_same_look(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    near = np.clip(base.astype(int) + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(base, 20, axis=1)  # same colours (same histogram), other structure
    other = np.full((64, 64, 3), (200, 30, 30), np.uint8)
    paths = {}
    for name, arr in {"query": base, "near": near, "shifted": shifted, "other": other}.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(arr).save(paths[name])
    pool = [_sample(str(paths[n]), "normal", "train") for n in ("shifted", "other", "near")]
    (out,), warnings = assign_references([_sample(str(paths["query"]), "anomalous", "test")], pool, mode="similar")
    assert out.reference == str(paths["near"]) and warnings == []
    # the histogram alone would pick the shifted copy (same colours); SSIM re-ranks by structure
    q, feats = image_features(str(paths["query"])), {n: image_features(str(paths[n])) for n in paths}
    assert cv2.compareHist(q.hist, feats["shifted"].hist, cv2.HISTCMP_CORREL) > cv2.compareHist(
        q.hist, feats["near"].hist, cv2.HISTCMP_CORREL)
    ranked = rank_similar(q, [(str(paths[n]), feats[n]) for n in ("other", "shifted", "near")])
    assert ranked[0] == str(paths["near"])
    # outside the SSIM shortlist the histogram order stands
    ranked1 = rank_similar(q, [(str(paths[n]), feats[n]) for n in ("other", "shifted", "near")], shortlist=1)
    assert ranked1 == [str(paths["shifted"]), str(paths["near"]), str(paths["other"])]


def test_a_query_without_pool_gets_no_reference_and_a_warning():
    pool = [_sample("/p/a.png", "normal", "train", category="other")]
    (out,), warnings = assign_references([_sample("/q/x.png", "anomalous", "test")], pool, mode="random")
    assert out.reference is None and len(warnings) == 1 and "/q/x.png" in warnings[0]


def test_ssim_formula():
    rng = np.random.default_rng(1)
    a = (rng.random((48, 48)) * 255).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    def noisy(amp: int) -> np.ndarray:
        return np.clip(a.astype(int) + rng.integers(-amp, amp + 1, a.shape), 0, 255).astype(np.uint8)

    scores = [ssim(a, noisy(amp)) for amp in (10, 40, 120)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0
    b = noisy(40)
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    # flat images: only the luminance term remains, (2·μa·μb + C1) / (μa² + μb² + C1)
    c1 = (0.01 * 255) ** 2
    flat = ssim(np.full((32, 32), 100, np.uint8), np.full((32, 32), 150, np.uint8))
    assert flat == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(a, a[:10])


@given(counts=st.dictionaries(st.sampled_from(["normal", "anomalous"]), st.integers(1, 400), min_size=1),
       fraction=st.floats(0.01, 0.99))
def test_label_quotas_hit_the_category_total(counts, fraction):
    q = label_quotas(counts, fraction)
    assert sum(q.values()) == int(np.floor(fraction * sum(counts.values()) + 0.5))
    assert all(0 <= q[k] <= counts[k] and abs(q[k] - fraction * counts[k]) < 1 for k in counts)


def test_stratified_draw_is_order_independent():
    samples = [_sample(f"/x/{i}.png", "normal" if i % 3 else "anomalous", "test") for i in range(40)]
    a, _ = stratified_draw(samples, 0.2, seed=4)
    b, _ = stratified_draw(list(reversed(samples)), 0.2, seed=4)
    assert sorted(s.id for s in a) == sorted(s.id for s in b) and len(a) == 8


def _sample(image: str, label: str, split: str, category: str = "c") -> Sample:
    stem = Path(image).stem + Path(image).parent.name
    return Sample(id=f"t/{category}/{split}/{label}/{stem}", image=image, dataset="t", category=category,
                  split=split, label=label, defect_type="good" if label == "normal" else "x")


def test_cross_dataset_refuses_a_target_without_native_test_split(four, tmp_path):
    station = make_synthetic_dataset(tmp_path / "station", layout="folder", n_train=2, n_test_good=1,
                                     n_test_defect=1, size=SIZE)
    with pytest.raises(ValueError, match="folder has none"):
        make_split([DatasetSource(four["mvtec"]), DatasetSource(station)],
                   SplitConfig(protocol="cross-dataset", reference="none"))
