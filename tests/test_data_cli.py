"""`adfm-data`: every option documented, inspect names each layout, boxes writes previews."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adfm.synthetic import SYNTHETIC_LAYOUTS, make_synthetic_dataset
from adfm.trainer.data import read_manifest
from adfm.trainer.data.cli import build_parser, main

SIZE = (64, 64)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli")
    return {
        name: make_synthetic_dataset(base / name, layout=name, n_train=2, n_test_good=1, n_test_defect=1,
                                     size=SIZE, seed=2)
        for name in SYNTHETIC_LAYOUTS
    }


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["inspect", "boxes", "split"])
def test_help_documents_every_option(command, capsys):
    sub = _subparsers(build_parser())[command]
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, action.dest
        name = action.option_strings[0] if action.option_strings else action.metavar
        assert name in text, name


@pytest.mark.parametrize("written", sorted(SYNTHETIC_LAYOUTS))
def test_inspect_json_names_the_layout(roots, written, capsys):
    assert main(["inspect", str(roots[written]), "--json", "--workers", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layout"] == ("folder" if written == "folder_csv" else written)
    assert data["totals"]["anomalous"] == 2 * 2  # 2 categories × 2 defect kinds × 1
    assert data["problems"]["count"] == 0 and data["skipped"]["count"] == 0
    assert sum(c["normal"] + c["anomalous"] for c in data["categories"].values()) == data["totals"]["images"]


def test_inspect_lists_skipped_files_in_text(roots, tmp_path, capsys):
    root = make_synthetic_dataset(tmp_path / "m", categories=("tile",), n_train=1, n_test_good=1,
                                  n_test_defect=1, defects=("spot",), size=SIZE)
    for i in range(25):
        (root / f"note{i:02d}.txt").write_text("x")
    assert main(["inspect", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "skipped files: 25" in out and "not an image file: 25" in out
    assert str(root / "note00.txt") in out and "… and 5 more" in out
    assert main(["inspect", str(root), "--quiet", "--all"]) == 0
    assert str(root / "note24.txt") in capsys.readouterr().out


def test_boxes_writes_previews_and_a_manifest(roots, tmp_path, capsys):
    preview, out = tmp_path / "preview", tmp_path / "boxes.jsonl"
    code = main(["boxes", str(roots["mvtec_loco"]), "--preview", str(preview), "--out", str(out),
                 "--kernel-size", "5", "--min-area", "0", "--quiet", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    samples = read_manifest(out)
    assert len(samples) == 4 and all(s.boxes for s in samples)
    assert summary["box_config"] == {"kernel_size": 5, "min_area": 0}
    pngs = sorted(preview.glob("*.png"))
    assert len(pngs) == 4
    img = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert img.shape[:2] == SIZE[::-1]
    # box outlines are drawn in the box colour somewhere on the preview
    assert (img == (40, 255, 80)).all(axis=-1).any()
    # the cache next to --out makes the second run a pure hit
    main(["boxes", str(roots["mvtec_loco"]), "--out", str(out), "--kernel-size", "5", "--min-area", "0",
          "--quiet", "--json"])
    again = json.loads(capsys.readouterr().out)
    assert again["cache"]["misses"] == 0 and again["cache"]["hits"] > 0


def test_bad_arguments_are_refused(roots, capsys):
    with pytest.raises(SystemExit) as info:
        main(["split", "--protocol", "multi-domain", "--dataset", str(roots["mvtec"]), "--out", "x",
              "--train-fraction", "1.5"])
    assert info.value.code == 2
    assert "between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inspect", str(roots["mvtec"]), "--layout", "imagenet"])


def test_forced_layout_prefix_in_split(roots, tmp_path):
    out = tmp_path / "s"
    assert main(["split", "--protocol", "multi-domain", "--dataset", f"goodsad={roots['mpdd']}",
                 "--out", str(out), "--quiet", "--reference", "none"]) == 0
    train = read_manifest(out / "train.jsonl")
    assert {s.dataset for s in train} == {"goodsad"} and all(s.reference is None for s in train)


def test_module_runs_as_a_program(roots):
    proc = subprocess.run([sys.executable, "-m", "adfm.trainer.data.cli", "inspect", str(roots["dagm"]),
                           "--quiet", "--quick"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "layout:  dagm" in proc.stdout
