"""Learning on the line (`adfm.runtime.gate_learning`) on the synthetic station: confirmed false alarms
of a new harmless mark make the next marked parts pass, confirmed defects never pass because of it,
and undo restores the previous bank exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from adfm.manifest import sha256_file
from adfm.runtime.gate import Gate, metadata_path
from adfm.runtime.gate_learning import GateLearner, LearningError
from adfm.synthetic import add_defect, add_mark, render_part
from tests.conftest import HAS_TORCH
from tests.gate_support import trained_gate

K = 6  # confirmed false alarms per part kind (3 let 4 of 20 marked washers through; 6 let none, measured)
KINDS = ("washer", "tile")  # the synthetic station's two part kinds


@pytest.fixture(scope="module")
def commissioned(tmp_path_factory, synthetic_folder) -> Path:
    if not HAS_TORCH:
        pytest.skip("training a gate needs the trainer extra (torch)")
    return trained_gate(tmp_path_factory, synthetic_folder)


def _station_gate(commissioned: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(commissioned, dest / commissioned.name)
    shutil.copy(metadata_path(commissioned), metadata_path(dest / commissioned.name))
    return dest / commissioned.name


def _calibration(station: Path, gate: Path) -> tuple[list[Path], list[Path]]:
    known = set(json.loads(metadata_path(gate).read_text())["training"]["calibration_images"])
    pick = lambda sub: [p for p in sorted((station / sub).glob("*.png")) if sha256_file(p) in known]  # noqa: E731
    return pick("normal"), pick("anomalous")


def _parts(kind: str, n: int, rng: np.random.Generator, mark: bool, defect: str | None = None) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        image, region = render_part(kind, rng)
        if mark:
            image = add_mark(image, region, rng)
        if defect:
            image, _ = add_defect(image, region, defect, rng)
        out.append(image)
    return out


def test_confirmed_false_alarms_teach_the_mark_and_undo_restores_the_bank(tmp_path, commissioned, synthetic_folder):
    path = _station_gate(commissioned, tmp_path / "station")
    original_onnx, original = sha256_file(path), Gate.load(path)
    normal, anomalous = _calibration(synthetic_folder, path)
    assert normal and anomalous
    learner = GateLearner(path, normal, anomalous)
    rng = np.random.default_rng(33)

    # a defect an operator confirmed before the mark appeared: on record, never in the bank
    confirmed_defect = _parts("tile", 1, rng, mark=True, defect="scratch")[0]
    learner.confirm_defect(confirmed_defect, part_id="d1", operator="ana")

    # the mark is new to the gate: every marked good part is a false alarm at first
    for kind in KINDS:
        assert all(original.score(p).suspicious for p in _parts(kind, 4, rng, mark=True)), kind

    changes = []
    for kind in KINDS:
        for i, part in enumerate(_parts(kind, K, rng, mark=True)):
            changes.append(learner.confirm_false_alarm(part, part_id=f"{kind}-{i}", operator="ana"))
    assert all(c.patches_added > 0 for c in changes)
    assert changes[-1].bank_size_after == original.metadata.model["bank_size"] + sum(c.patches_added for c in changes)
    gate = learner.gate
    assert gate.bank_sha256 == changes[-1].bank_sha256_after != original.bank_sha256

    # the next parts with the mark pass; results carry the new bank's hash
    for kind in KINDS:
        results = [gate.score(p) for p in _parts(kind, 5, rng, mark=True)]
        assert not any(r.suspicious for r in results), (kind, [r.score for r in results], gate.threshold)
        assert {r.bank_sha256 for r in results} == {gate.bank_sha256}
    # the confirmed defect and the calibration defects stay flagged; new defects beside the mark too
    assert gate.score(confirmed_defect).suspicious
    assert changes[-1].reviewed_defects == changes[-1].reviewed_defects_flagged == 1
    for kind in KINDS:
        spots = _parts(kind, 4, rng, mark=True, defect="spot")
        assert all(gate.score(p).suspicious for p in spots), kind

    # a confirmed defect is refused as a false alarm
    with pytest.raises(LearningError, match="confirmed as a defect"):
        learner.confirm_false_alarm(confirmed_defect, part_id="d1", operator="bo")

    # undo every change: the commissioned files come back byte for byte
    for _ in changes:
        learner.undo(operator="ana")
    assert sha256_file(path) == original_onnx
    assert learner.gate.bank_sha256 == original.bank_sha256
    assert learner.gate.threshold == original.threshold
    with pytest.raises(LearningError, match="nothing to undo"):
        learner.undo(operator="ana")
    history = learner.history()
    assert [h["action"] for h in history] == ["add"] * len(changes) + ["undo"] * len(changes)


def test_a_defect_the_gate_passes_lowers_the_threshold(tmp_path, commissioned, synthetic_folder):
    path = _station_gate(commissioned, tmp_path / "station")
    normal, anomalous = _calibration(synthetic_folder, path)
    learner = GateLearner(path, normal, anomalous)
    passed = min(_parts("washer", 6, np.random.default_rng(5), mark=False), key=lambda p: learner.gate.score(p).score)
    before = learner.gate.threshold
    change = learner.confirm_defect(passed, part_id="p9", operator="ana")  # good-looking, but the operator says no
    assert change is not None and change.action == "threshold" and change.patches_added == 0
    assert change.threshold_after < before and learner.gate.score(passed).suspicious
    assert change.bank_sha256_after == change.bank_sha256_before  # the bank did not change
    assert learner.confirm_defect(passed, part_id="p9", operator="ana") is None  # already flagged now


def test_calibration_images_must_be_the_ones_that_calibrated(tmp_path, commissioned, synthetic_folder):
    path = _station_gate(commissioned, tmp_path / "station")
    normal, anomalous = _calibration(synthetic_folder, path)
    stranger = tmp_path / "other.png"
    from PIL import Image

    Image.fromarray(_parts("tile", 1, np.random.default_rng(1), mark=False)[0]).save(stranger)
    with pytest.raises(LearningError, match=r"other\.png is not one of the images that calibrated"):
        GateLearner(path, [*normal, stranger], anomalous)
    with pytest.raises(LearningError, match=r"missing\.png not found"):
        GateLearner(path, [tmp_path / "missing.png"], anomalous)
