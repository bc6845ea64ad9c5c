"""ONNX Runtime static int8 quantization of the gate's backbone, against the float graph, in one run.

Trains the default gate on the synthetic station (seed 1), quantizes its graph with
`onnxruntime.quantization.quantize_static`, calibrated on the gate's own fit images (the good parts
it was fitted on, batch 1), and scores the synthetic station of seed 7 with each graph. Variants
(the backbone's convolutions only: the bank search stays float, so the nearest row's distance is comparable):
- `qdq-per-channel-minmax`: QDQ format, per-channel int8 weights, uint8 activations, MinMax;
- `qdq-per-channel-entropy`: the same with entropy calibration;
- `qoperator-per-channel-minmax`: QLinearConv operators instead of QDQ pairs;
- `qdq-pointwise-only`: the depthwise convolutions left in float;
- `qdq-per-channel-minmax-with-smoothing`: the first, with the heat map's Gaussian smoothing (a Conv
  after the distances) quantized too — what quantizing every Conv does.
Figures: image AUROC, the patch features' mean relative error against the float graph, and the
graph's median ms per 256×256 frame on one thread (time.perf_counter, 40 frames after 5 warm-up).
Writes bench/results/gate_int8.json. Run: python bench/gate_int8.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from adfm.offline import force_offline

force_offline()

RESULTS = Path(__file__).resolve().parent / "results" / "gate_int8.json"


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _images(folder: Path) -> np.ndarray:
    from PIL import Image

    from adfm.runtime.gate import preprocess

    return np.stack([preprocess(np.asarray(Image.open(p).convert("RGB")), 256, 256)
                     for p in sorted(folder.glob("*.png"))])


def _figures(path: Path, test: np.ndarray, labels: np.ndarray, ref_feats: np.ndarray | None) -> dict:
    from adfm.trainer.evaluation.metrics import auroc

    s = _session(path)
    scores, feats = [], []
    for i in range(0, len(test), 8):
        sc, f = s.run(["score", "patch_features"], {"image": test[i : i + 8]})
        scores.append(sc)
        feats.append(f)
    feats = np.concatenate(feats)
    frame = test[:1]
    for _ in range(5):
        s.run(["score", "heatmap"], {"image": frame})
    times = []
    for _ in range(40):
        t0 = time.perf_counter()
        s.run(["score", "heatmap"], {"image": frame})
        times.append(time.perf_counter() - t0)
    out = {"image_auroc": auroc(labels, np.concatenate(scores).astype(np.float64)),
           "graph_median_ms_1_thread": round(statistics.median(times) * 1e3, 2)}
    if ref_feats is not None:
        rel = np.abs(feats - ref_feats).mean() / np.abs(ref_feats).mean()
        out["feature_mean_relative_error"] = round(float(rel), 4)
    return out, feats


def main() -> int:
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from adfm.synthetic import make_synthetic_dataset
    from adfm.trainer.data.records import read_manifest
    from adfm.trainer.gate import GateTrainConfig, train_gate

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="adfm-gate-int8-") as tmp:
        work = Path(tmp)
        station = make_synthetic_dataset(work / "fit", layout="folder", seed=1)
        test_root = make_synthetic_dataset(work / "test", layout="folder", seed=7)
        result = train_gate(GateTrainConfig(data=station, out=work / "gate.onnx", progress=False))
        from PIL import Image

        from adfm.runtime.gate import preprocess

        fit = [preprocess(np.asarray(Image.open(s.image).convert("RGB")), 256, 256)[None]
               for s in read_manifest(result.train_manifest)]
        normal, bad = _images(test_root / "normal"), _images(test_root / "anomalous")
        test = np.concatenate([normal, bad])
        labels = np.r_[np.zeros(len(normal), bool), np.ones(len(bad), bool)]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(fit)

            def get_next(self):
                x = next(self.it, None)
                return None if x is None else {"image": x}

        pre = work / "pre.onnx"
        quant_pre_process(str(result.onnx_path), str(pre), skip_symbolic_shape=True)
        convs = [n for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        # the backbone only: the Gaussian smoothing of the distance map is a Conv too, and quantizing it
        # clips every distance above the fit images' range (every defect then scores the same)
        not_backbone = [n.name for n in convs if not n.name.startswith("/features/")]
        depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
        variants = {
            "qdq-per-channel-minmax": {},
            "qdq-per-channel-entropy": {"calibrate_method": CalibrationMethod.Entropy},
            "qoperator-per-channel-minmax": {"quant_format": QuantFormat.QOperator},
            "qdq-pointwise-only": {"nodes_to_exclude": depthwise},
            "qdq-per-channel-minmax-with-smoothing": {"quantize_smoothing": True},
        }
        figures = {}
        figures["float"], ref = _figures(result.onnx_path, test, labels, None)
        for name, extra in variants.items():
            out = work / f"{name}.onnx"
            extra = dict(extra)
            keep_float = [] if extra.pop("quantize_smoothing", False) else not_backbone
            keep_float = [*keep_float, *extra.pop("nodes_to_exclude", [])]
            settings = {"quant_format": QuantFormat.QDQ, "calibrate_method": CalibrationMethod.MinMax,
                        "nodes_to_exclude": keep_float, **extra}
            quantize_static(str(pre), str(out), Reader(), op_types_to_quantize=["Conv"], per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **settings)
            figures[name], _ = _figures(out, test, labels, ref)
            print(f"{name}: {figures[name]}", file=sys.stderr, flush=True)
    report = {
        "bench": "gate_int8",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/gate_int8.py",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_start": [round(v, 2) for v in load_start],
                    "load_avg_end": [round(v, 2) for v in os.getloadavg()],
                    "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
        "gate": {"settings": "train_gate defaults", "fit_images": len(fit), "test_normal": int((~labels).sum()),
                 "test_anomalous": int(labels.sum())},
        "results": figures,
        "note": "ms on a shared 2-core machine: compare within this run only",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
