"""The README's demo end to end with the model it builds: the warm-started tiny model that sees the defects.

Nothing is handed in: `adfm-appliance demo` trains the tiny model on synthetic washers (`adfm-train
warmstart`), exports it to GGUF through `adfm-export`, fits the gate, and runs held-out parts through
llama.cpp twice — the model alone (gate off, greedy), then the station behind the gate. The other
end-to-end tests use the random-weight tiny model, whose answers do not follow the image; this one
needs answers that do: the model alone must tell the defective parts from the good ones and put its
box on the defect. Slow (the first build is a few minutes on two cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import HAS_LLAMA

pytestmark = [pytest.mark.slow, pytest.mark.needs_torch,
              pytest.mark.skipif(not HAS_LLAMA, reason="needs llama-cpp-python (appliance/export extra)")]

PARTS = 12


def test_the_demo_model_sees_the_defects_through_llama_cpp(tmp_path, capsys):
    from adfm.appliance.cli import main

    cache = tmp_path / "cache"
    assert main(["demo", "--parts", str(PARTS), "--json", "--cache", str(cache)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["demo_model"], "the demo built its own model"

    alone = summary["model_alone"]
    assert alone["parts"] == PARTS and alone["temperature"] == 0.0
    # half the parts are defective: a model that does not see scores about 50 % (it says one word to all)
    assert alone["accuracy"] >= 10 / PARTS, alone["per_part"]
    assert alone["format_rate"] == 1.0 and alone["malformed_boxes"] == 0
    # on the defective parts its box lands on the defect (IoU against the mask's box, original pixels)
    defective = [p for p in alone["per_part"] if p["truth"] == "anomalous"]
    assert len(defective) == PARTS // 2
    assert sum((p["best_iou"] or 0) > 0.2 for p in defective) >= len(defective) - 1, defective
    assert alone["iou50_defective"] >= 0.5

    sheet = Path(alone["contact_sheet"])
    assert sheet.is_file() and Image.open(sheet).size[0] > 256 * 4  # every part drawn, boxes on it

    station = summary["against_truth"]
    assert station["parts_scored"] == PARTS and station["accuracy"] >= 9 / PARTS
