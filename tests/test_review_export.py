"""`adfm-review export-labels`: operator decisions out as the generic dataset adfm-data reads."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from adfm.appliance.journal.store import Journal, decode_image
from adfm.appliance.review.cli import main
from adfm.appliance.review.export_labels import PROVENANCE, ExportError, ExportOptions, export_labels
from adfm.schema import Box, InspectionResult, OperatorVerdict


def add(j: Journal, verdict: str, decision: str | None, *, product: str = "washer", camera: str = "cam0",
        boxes: list[Box] | None = None, note: str = "") -> int:
    i = j.last_seq() + 1
    image = np.full((40, 60, 3), 30 * (i % 8), np.uint8)
    p = j.accept(image, part_id=f"p{i}", camera=camera, frame_number=i, captured_wall=time.time(), product=product)
    j.complete(InspectionResult(station="st1", seq=p.seq, part_id=p.part_id, camera=camera, frame_number=i,
                                captured_at=p.captured_at, verdict=verdict, boxes=boxes or [],  # type: ignore[arg-type]
                                image_path=p.image_path, image_width=60, image_height=40))
    if decision is not None:
        j.add_verdict(OperatorVerdict(station="st1", seq=p.seq, decision=decision, operator="anna",  # type: ignore[arg-type]
                                      note=note, verdict_id=f"v{p.seq}-{decision}"))
    return p.seq


@pytest.fixture
def journal_dir(tmp_path) -> Path:
    """seq 1 defect (2 boxes), 2 false alarm, 3 skipped, 4 undecided fail, 5 pass, 6 defect, no boxes."""
    root = tmp_path / "journal"
    with Journal(root, "st1") as j:
        add(j, "fail", "confirmed_defect", boxes=[Box.from_xyxy([5, 5, 20, 15], "scratch"),
                                                  Box.from_xyxy([40, 30, 50, 38], "dent")], note="deep")
        add(j, "fail", "false_alarm", note="glare")
        add(j, "review", "skip")
        add(j, "fail", None)
        add(j, "pass", None)
        add(j, "review", "confirmed_defect", camera="cam1")
    return root


def test_folder_layout_is_read_by_the_folder_adapter(journal_dir, tmp_path):
    from adfm.trainer.data.layouts import scan_dataset

    out = tmp_path / "washer"
    report = export_labels(ExportOptions(journal=journal_dir, out=out, masks_from_boxes=True))
    assert (report.normal, report.anomalous, report.masks, report.errors) == (1, 2, 1, [])
    assert report.left_out == {"skipped by the operator": 1}
    assert sorted(p.name for p in (out / "anomalous").iterdir()) == ["st1-0000000001.png", "st1-0000000006.png"]
    assert [p.name for p in (out / "normal").iterdir()] == ["st1-0000000002.png"]
    # images are the journal's bytes; the mask is the boxes on the image grid
    with Journal(journal_dir, "st1") as j:
        assert (out / "normal" / "st1-0000000002.png").read_bytes() == j.image_file(j.get(2).image_path).read_bytes()
    mask = decode_image(out / "masks" / "st1-0000000001.png")[:, :, 0]
    assert mask.shape == (40, 60) and int((mask > 0).sum()) == 15 * 10 + 10 * 8
    assert mask[5, 5] and mask[14, 19] and not mask[15, 20] and mask[30, 40]

    scan, detection = scan_dataset(out)
    assert detection.layout == "folder"
    labels = {Path(s.image).name: (s.label, s.category, len(s.masks)) for s in scan.samples}
    assert labels == {"st1-0000000001.png": ("anomalous", "washer", 1), "st1-0000000002.png": ("normal", "washer", 0),
                      "st1-0000000006.png": ("anomalous", "washer", 0)}
    assert [p.kind for p in scan.problems] == ["missing_mask"]  # seq 6: confirmed, but the model drew no box
    assert [Path(s.path).name for s in scan.skipped] == [PROVENANCE]

    prov = [json.loads(line) for line in (out / PROVENANCE).read_text().splitlines()]
    assert [(r["seq"], r["decision"], r["operator"], r["note"]) for r in prov] == [
        (1, "confirmed_defect", "anna", "deep"), (2, "false_alarm", "anna", "glare"),
        (6, "confirmed_defect", "anna", "")]


def test_adfm_data_inspect_reads_the_export(journal_dir, tmp_path, capsys):
    from adfm.trainer.data.cli import main as adfm_data

    out = tmp_path / "washer"
    assert main(["export-labels", "--journal", str(journal_dir), "--out", str(out)]) == 0
    assert "exported 3 parts" in capsys.readouterr().out
    assert adfm_data(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["normal"] == 1 and report["totals"]["anomalous"] == 2


def test_csv_layout_names_each_rows_category(journal_dir, tmp_path):
    from adfm.trainer.data.layouts import scan_dataset

    with Journal(journal_dir, "st1") as j:
        add(j, "fail", "false_alarm", product="bolt")
    out = tmp_path / "csv"
    report = export_labels(ExportOptions(journal=journal_dir, out=out, layout="csv", masks_from_boxes=True))
    assert (report.normal, report.anomalous) == (2, 2)
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert [(r["path"], r["label"], r["category"]) for r in rows] == [
        ("images/st1-0000000001.png", "anomalous", "washer"), ("images/st1-0000000002.png", "normal", "washer"),
        ("images/st1-0000000006.png", "anomalous", "washer"), ("images/st1-0000000007.png", "normal", "bolt")]
    assert rows[0]["mask"] == "masks/st1-0000000001.png"
    scan, detection = scan_dataset(out)
    assert detection.layout == "folder" and len(scan.samples) == 4
    assert sorted({s.category for s in scan.samples}) == ["bolt", "washer"]


def test_folder_layout_needs_one_product(journal_dir, tmp_path):
    with Journal(journal_dir, "st1") as j:
        add(j, "fail", "false_alarm", product="bolt")
    with pytest.raises(ExportError, match=r"2 products \(bolt, washer\).*--product NAME"):
        export_labels(ExportOptions(journal=journal_dir, out=tmp_path / "x"))
    report = export_labels(ExportOptions(journal=journal_dir, out=tmp_path / "bolt", product="bolt"))
    assert (report.normal, report.anomalous) == (1, 0)


def test_exporting_again_follows_changed_decisions_and_removes_only_its_own_files(journal_dir, tmp_path):
    out = tmp_path / "washer"
    export_labels(ExportOptions(journal=journal_dir, out=out))
    with Journal(journal_dir, "st1") as j:  # the operator changes their mind on seq 2
        j.add_verdict(OperatorVerdict(station="st1", seq=2, decision="confirmed_defect", operator="bob",
                                      verdict_id="later"))
    report = export_labels(ExportOptions(journal=journal_dir, out=out))
    assert report.removed == ["normal/st1-0000000002.png"]
    assert (out / "anomalous" / "st1-0000000002.png").is_file() and not (out / "normal" / "st1-0000000002.png").exists()
    report = export_labels(ExportOptions(journal=journal_dir, out=out, cameras=("cam1",)))
    assert report.anomalous == 1 and len(report.removed) == 2


def test_refuses_a_folder_that_is_not_an_export(journal_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["export-labels", "--journal", str(journal_dir), "--out", str(out)]) == 2
    assert "not empty and holds no earlier export" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_unreadable_and_pruned_images_are_reported_not_silently_dropped(journal_dir, tmp_path, capsys):
    with Journal(journal_dir, "st1") as j:
        j.image_file(j.get(2).image_path).write_bytes(b"\x89PNG truncated")
        j._conn().execute("UPDATE parts SET image_pruned = 1 WHERE seq = 6")
    out = tmp_path / "washer"
    assert main(["export-labels", "--journal", str(journal_dir), "--out", str(out), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["anomalous"] == 1 and report["normal"] == 0
    assert report["left_out"] == {"skipped by the operator": 1, "image pruned by the retention policy": 1}
    [error] = report["errors"]
    assert error.startswith("seq 2:") and "not a readable image" in error


def test_dry_run_writes_nothing(journal_dir, tmp_path, capsys):
    out = tmp_path / "washer"
    assert main(["export-labels", "--journal", str(journal_dir), "--out", str(out), "--dry-run"]) == 0
    assert "would export 3 parts" in capsys.readouterr().out and not out.exists()


def test_time_filters_and_bad_arguments(journal_dir, tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["export-labels", "--journal", str(journal_dir), "--out", str(out), "--since", "2999-01-01"]) == 0
    assert "exported 0 parts" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export-labels", "--journal", str(journal_dir), "--out", str(out), "--since", "yesterday"])
    assert "not an ISO 8601 time" in capsys.readouterr().err
    assert main(["export-labels", "--journal", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no journal here" in capsys.readouterr().err


_PROBE = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers"} or name.startswith("adfm.trainer"):
                raise ImportError(f"{name} is blocked: the line PC has no trainer")
    sys.meta_path.insert(0, Block())
    from adfm.appliance.review.cli import main
    sys.exit(main(["export-labels", "--journal", sys.argv[1], "--out", sys.argv[2], "--masks-from-boxes"]))
    """
)


def test_export_needs_neither_torch_nor_the_trainer(journal_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(journal_dir), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exported 3 parts" in proc.stdout and (tmp_path / "out" / "masks" / "st1-0000000001.png").is_file()
