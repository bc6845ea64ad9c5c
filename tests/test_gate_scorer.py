"""The line's gate scorer (`adfm.runtime.gate`): scores and heat maps, refusing bad files and
bad images, the heat map PNG, and no torch on the appliance side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adfm.runtime.gate import Gate, GateError, GateResult, metadata_path, render_heatmap, save_heatmap
from tests.conftest import HAS_TORCH
from tests.gate_support import read_rgb, trained_gate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gate_path(tmp_path_factory, synthetic_folder) -> Path:
    if not HAS_TORCH:
        pytest.skip("training a gate needs the trainer extra (torch)")
    return trained_gate(tmp_path_factory, synthetic_folder)


@pytest.fixture(scope="module")
def gate(gate_path) -> Gate:
    return Gate.load(gate_path, threads=1)


def _copy_gate(gate_path: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    onnx = dest / gate_path.name
    onnx.write_bytes(gate_path.read_bytes())
    metadata_path(onnx).write_text(metadata_path(gate_path).read_text())
    return onnx


def test_heat_map_is_image_sized_and_hottest_on_the_defect(gate, synthetic_folder):
    # a spot is a compact defect: the map's peak must fall on it (the mask, grown by one feature cell)
    import cv2

    for path in sorted((synthetic_folder / "anomalous").glob("*spot*.png")):
        image = read_rgb(path)
        mask = np.asarray(Image.open(synthetic_folder / "masks" / path.name)) > 0
        r = gate.score(image)
        assert r.heatmap.shape == image.shape[:2] and r.heatmap.dtype == np.float32
        y, x = np.unravel_index(int(np.argmax(r.heatmap)), r.heatmap.shape)
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((17, 17), np.uint8)) > 0
        assert grown[y, x], f"{path.name}: heat map peak at ({x}, {y}) is off the defect"
        assert r.heatmap[mask].mean() > np.median(r.heatmap)


def test_score_follows_the_threshold_and_any_image_size(gate, synthetic_folder):
    image = read_rgb(sorted((synthetic_folder / "anomalous").iterdir())[0])
    r = gate.score(image)
    assert r.threshold == gate.threshold and r.suspicious == (r.score >= gate.threshold)
    wide = np.ascontiguousarray(np.concatenate([image, image[:, :64]], axis=1))  # 320×256, not the input size
    rw = gate.score(wide)
    assert rw.heatmap.shape == (256, 320) and np.isfinite(rw.score)
    gray = gate.score(image[..., 1])
    assert gray.heatmap.shape == (256, 256)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    assert gate.score(rgba).score == pytest.approx(r.score)


def test_batch_scores_match_single_scores(gate, synthetic_folder):
    images = [read_rgb(p) for p in sorted((synthetic_folder / "normal").iterdir())[:3]]
    batch = gate.score_batch(images)
    for image, b in zip(images, batch, strict=True):
        one = gate.score(image)
        assert b.score == pytest.approx(one.score, rel=1e-4)
        np.testing.assert_allclose(b.heatmap, one.heatmap, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((32, 32, 3), np.float32), "uint8"),
        (np.zeros((32, 32, 2), np.uint8), "shape"),
        (np.zeros((0, 32, 3), np.uint8), "no pixels"),
        ([[0, 1]], "numpy"),
    ],
)
def test_bad_images_are_refused_by_name(gate, image, message):
    with pytest.raises(GateError, match=message):
        gate.score(image)


def test_load_refuses_missing_corrupt_and_mismatched_files(gate_path, tmp_path):
    with pytest.raises(GateError, match="gate model not found"):
        Gate.load(tmp_path / "absent.onnx")

    onnx = _copy_gate(gate_path, tmp_path / "a")
    metadata_path(onnx).unlink()
    with pytest.raises(GateError, match=r"gate\.json: gate metadata not found"):
        Gate.load(onnx)

    onnx = _copy_gate(gate_path, tmp_path / "b")
    metadata_path(onnx).write_text("{not json")
    with pytest.raises(GateError, match="not readable as JSON"):
        Gate.load(onnx)

    onnx = _copy_gate(gate_path, tmp_path / "c")
    meta = json.loads(metadata_path(onnx).read_text())
    meta["threshold"] = "high"
    metadata_path(onnx).write_text(json.dumps(meta))
    with pytest.raises(GateError, match="threshold"):
        Gate.load(onnx)

    onnx = _copy_gate(gate_path, tmp_path / "d")
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")  # another graph than the metadata's
    with pytest.raises(GateError, match="does not match its metadata"):
        Gate.load(onnx)
    with pytest.raises(GateError, match="not a loadable ONNX model"):
        Gate.load(onnx, check_hash=False)  # and the bytes are no ONNX model either

    onnx = _copy_gate(gate_path, tmp_path / "e")
    meta = json.loads(metadata_path(onnx).read_text())
    meta["input_width"] = 320
    metadata_path(onnx).write_text(json.dumps(meta))
    with pytest.raises(GateError, match="graph takes 256x256 images but its metadata says 320x256"):
        Gate.load(onnx)


def test_heat_map_png_uses_a_fixed_scale_and_can_overlay(tmp_path):
    heat = np.zeros((40, 60), np.float32)
    heat[10:20, 10:20] = 2.0  # above the top of the display range: hottest colour
    r = GateResult(score=2.0, heatmap=heat, threshold=1.0, suspicious=True, display_range=(0.0, 1.0))
    path = save_heatmap(r, tmp_path / "part.gate.png")
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert png.shape == (40, 60, 3)
    assert png[15, 15].sum() > png[30, 50].sum() + 300  # hot square, cold background
    image = np.full((40, 60, 3), 200, np.uint8)
    overlay = render_heatmap(r, image)
    assert (overlay[30, 50] == 200).all()  # cold: the part's own pixels
    assert abs(overlay[15, 15].astype(int) - png[15, 15]).max() < abs(200 - png[15, 15]).max()  # hot: the colour
    with pytest.raises(ValueError, match="but the heat map is 60x40"):
        render_heatmap(r, np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match=r"give a \.png path"):
        save_heatmap(r, tmp_path / "part.jpg")
    big = GateResult(score=0.0, heatmap=np.zeros((3000, 1500), np.float32), threshold=1.0, suspicious=False)
    assert Image.open(save_heatmap(big, tmp_path / "big.png")).size == (512, 1024)


def test_appliance_side_scores_without_importing_torch(gate_path, tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from adfm.runtime.gate import Gate, save_heatmap\n"
        f"g = Gate.load({str(gate_path)!r}, threads=1)\n"
        "r = g.score(np.full((120, 160, 3), 128, np.uint8))\n"
        f"save_heatmap(r, {str(tmp_path / 'm.png')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(r.score, r.heatmap.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["(120,", "160)"]
