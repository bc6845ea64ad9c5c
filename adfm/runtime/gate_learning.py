"""Learning on the line: operators' confirmed false alarms become normal patches in the gate's bank.

Why: a station's operators confirm every shift that some flagged parts are good (a harmless mark,
a new but acceptable texture). Without this, each such part goes to the VLM forever. With it, the
patches that made the part suspicious are added to the memory bank through the line's own ONNX
feature graph (no torch), and the threshold is re-derived from the commissioning calibration set
plus the reviewed parts.

Guarantees (tests/test_gate_learning.py):
- a confirmed defect never enters the bank, and every confirmed defect on record still scores at
  or above the threshold after any change (the threshold is lowered if needed, and the cost — the
  share of good parts sent to the VLM — is recorded);
- every change is a new version: new graph and metadata files, the bank's hash (`bank_sha256`) in
  the metadata and in every `GateResult`, one line in `history.jsonl`; `undo()` puts the previous
  files back byte for byte (same hashes).

The appliance's part (not here): call `confirm_false_alarm` / `confirm_defect` on operator verdicts,
then reload the recipe's gate (`learner.gate`, or `Gate.load(path)`: the files are replaced in place,
graph first, so a reader between the two sees a hash mismatch and must retry), and publish the
returned `BankChange` (bus, metrics, OPC UA).

Files, beside the gate (`gate.onnx` → `gate.learning/`): `reviewed/<sha256>.png` (the reviewed
images, kept to re-derive later thresholds), `reviewed.jsonl`, `versions/<onnx sha256>.onnx|.json`
(every version, the commissioned one included) and `history.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from ..files import write_atomic
from ..manifest import sha256_file
from .gate import (
    FILE_MODE,
    Calibration,
    Gate,
    GateError,
    as_rgb_uint8,
    metadata_path,
    preprocess,
    write_metadata,
)
from .gate_bank import BANK, BANK_PROJ, BANK_SEARCH, as_bank, bank_digest, nearest_distances, search_matrix
from .gate_calibration import quantile_threshold, recall_threshold

#: Patches added per confirmed false alarm at most (the hottest ones): bounds the bank's growth.
MAX_PATCHES_PER_IMAGE = 256
#: Patches the line may add in all before the gate must be retrained (the bank size sets the frame rate).
MAX_ADDED_PATCHES = 2048
#: The comparison quantile recorded beside a recall threshold (the trainer's default, 0.90).
NORMAL_QUANTILE = 0.90


class LearningError(GateError):
    """A review the gate cannot learn from, or an undo with nothing to undo; the message says why."""


@dataclass(frozen=True)
class BankChange:
    """One version step of a station's gate, as written to `history.jsonl` and published."""

    action: Literal["add", "threshold", "undo"]
    at: str
    part_id: str
    operator: str
    onnx_sha256_before: str
    onnx_sha256_after: str
    bank_sha256_before: str
    bank_sha256_after: str
    bank_size_before: int
    bank_size_after: int
    patches_added: int
    threshold_before: float
    threshold_after: float
    normal_flag_rate: float | None  # on the calibration normals plus reviewed good parts
    reviewed_defects_flagged: int
    reviewed_defects: int


def _image_digest(rgb: np.ndarray) -> str:
    h = hashlib.sha256(f"{rgb.shape}".encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise LearningError(f"{path}: not a readable image ({exc})") from exc


class GateLearner:
    """Adds confirmed false alarms to a gate's bank, versioned and undoable; see the module docstring.

    `calibration_normal` / `calibration_anomalous`: the commissioning images that set the threshold
    (the held-out good parts and the known defective ones); each must be one of the images the
    metadata lists in `training.calibration_images` (by sha256), so the line re-derives the
    threshold from the same evidence the trainer used.
    """

    def __init__(
        self,
        gate_path: str | Path,
        calibration_normal: Sequence[str | Path],
        calibration_anomalous: Sequence[str | Path] = (),
        *,
        store: str | Path | None = None,
        threads: int | None = 1,
        max_patches_per_image: int = MAX_PATCHES_PER_IMAGE,
        max_added_patches: int = MAX_ADDED_PATCHES,
    ) -> None:
        self.path = Path(gate_path)
        self.threads = threads
        self.store = Path(store) if store is not None else self.path.with_suffix(".learning")
        if max_patches_per_image < 1 or max_added_patches < 1:
            raise LearningError("max_patches_per_image and max_added_patches must be ≥ 1")
        self.max_patches_per_image = max_patches_per_image
        self.max_added_patches = max_added_patches
        self.gate = Gate.load(self.path, threads=threads)
        if not self.gate.session.has_patch_output:
            raise LearningError(f"{self.path}: this gate graph has no patch-feature output (trained by an adfm "
                                "before the line could learn); train it again with adfm-train gate")
        known = set(self.gate.metadata.training.get("calibration_images", []))
        self._normal = self._calibration_images(calibration_normal, known, "calibration_normal")
        self._anomalous = self._calibration_images(calibration_anomalous, known, "calibration_anomalous")
        if not self._normal and not self._anomalous:
            raise LearningError(f"{self.path}: the threshold cannot be re-derived without calibration images")
        for sub in ("reviewed", "versions"):
            (self.store / sub).mkdir(parents=True, exist_ok=True)

    # -- public API -------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[GateLearner]:
        """Hold the store's lock (one writer at a time: the station's learning and a person's undo),
        and pick up a version another process installed since this learner last looked."""
        import fcntl

        with (self.store / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if sha256_file(self.path) != self.gate.metadata.onnx_sha256:
                    self.gate = Gate.load(self.path, threads=self.threads)
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def confirm_false_alarm(self, image: np.ndarray, *, part_id: str, operator: str) -> BankChange:
        """An operator says this flagged part is good: its unusual patches join the bank.

        Adds patches of the image until every one of them lies within ordinary good texture's
        distance of the bank (the heat map's display floor, the 95th percentile
        of held-out good parts' map values): farthest first, each pick shrinking the others' distances,
        at most `max_patches_per_image`. Then re-derives the threshold. Refuses an image confirmed as a
        defect.
        """
        rgb = as_rgb_uint8(image)
        digest = _image_digest(rgb)
        verdicts = {r["sha256"]: r["verdict"] for r in self._reviewed()}
        if verdicts.get(digest) == "defect":
            raise LearningError(f"part {part_id}: this image was confirmed as a defect; it never enters the bank")
        self._record_review(rgb, digest, "false_alarm", part_id, operator)
        bank, proj = self._bank()
        hot = self._new_patches(rgb, bank)
        added = int(bank.shape[0]) - int(self.gate.metadata.training.get("n_bank_commissioned", bank.shape[0]))
        if added + len(hot) > self.max_added_patches:
            raise LearningError(
                f"{self.path}: the line has added {added} patches; {len(hot)} more would pass the limit "
                f"of {self.max_added_patches} (the bank size sets the frame rate): train the gate again "
                "with the reviewed parts among its good images"
            )
        new_bank = np.concatenate([bank, hot]) if len(hot) else bank
        return self._commit("add", new_bank, proj, part_id, operator, patches_added=len(hot))

    def confirm_defect(self, image: np.ndarray, *, part_id: str, operator: str) -> BankChange | None:
        """An operator says this part is defective: kept on record, never added to the bank.

        If the current threshold would pass it, the threshold is lowered to flag it (a new version);
        otherwise nothing changes now, and every later change keeps it flagged. Returns the change or None.
        """
        rgb = as_rgb_uint8(image)
        digest = _image_digest(rgb)
        if any(r["sha256"] == digest and r["verdict"] == "false_alarm" for r in self._reviewed()):
            raise LearningError(f"part {part_id}: this image was confirmed as a false alarm before; "
                                "undo that change first")
        self._record_review(rgb, digest, "defect", part_id, operator)
        if self.gate.score(rgb).suspicious:
            return None
        bank, proj = self._bank()
        return self._commit("threshold", bank, proj, part_id, operator, patches_added=0)

    def undo(self, *, operator: str) -> BankChange:
        """Put back the version before the last change not yet undone (its files byte for byte)."""
        stack: list[dict] = []
        for row in self.history():
            if row["action"] == "undo":
                stack.pop()
            else:
                stack.append(row)
        if not stack:
            raise LearningError(f"{self.path}: nothing to undo")
        last = stack[-1]
        target = last["onnx_sha256_before"]
        onnx_src = self.store / "versions" / f"{target}.onnx"
        meta_src = self.store / "versions" / f"{target}.json"
        if not (onnx_src.is_file() and meta_src.is_file()):
            raise LearningError(f"{onnx_src}: the version to go back to is missing")
        before = self.gate
        self._install(onnx_src, meta_src)
        after = self.gate
        change = BankChange(
            action="undo", at=_now(), part_id=last["part_id"], operator=operator,
            onnx_sha256_before=before.metadata.onnx_sha256, onnx_sha256_after=after.metadata.onnx_sha256,
            bank_sha256_before=before.bank_sha256 or "", bank_sha256_after=after.bank_sha256 or "",
            bank_size_before=int(before.metadata.model.get("bank_size", 0)),
            bank_size_after=int(after.metadata.model.get("bank_size", 0)), patches_added=0,
            threshold_before=before.threshold, threshold_after=after.threshold,
            normal_flag_rate=after.metadata.calibration.normal_flag_rate,
            reviewed_defects_flagged=last["reviewed_defects_flagged"], reviewed_defects=last["reviewed_defects"],
        )
        self._append_history(change)
        return change

    def history(self) -> list[dict]:
        """Every change so far, oldest first (the rows of `history.jsonl`)."""
        path = self.store / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # -- internals --------------------------------------------------------------------------------

    def _calibration_images(self, paths: Sequence[str | Path], known: set[str], field: str) -> list[np.ndarray]:
        images = []
        for p in map(Path, paths):
            if not p.is_file():
                raise LearningError(f"{field}: {p} not found")
            if sha256_file(p) not in known:
                raise LearningError(f"{field}: {p} is not one of the images that calibrated {self.path} "
                                    "(training.calibration_images in its metadata)")
            images.append(_read_image(p))
        return images

    def _reviewed(self) -> list[dict]:
        path = self.store / "reviewed.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _record_review(self, rgb: np.ndarray, digest: str, verdict: str, part_id: str, operator: str) -> None:
        import cv2

        png = self.store / "reviewed" / f"{digest}.png"
        if not png.is_file():
            ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if not ok:
                raise LearningError(f"part {part_id}: the image could not be encoded as PNG")
            write_atomic(png, data.tobytes(), mode=FILE_MODE)
        row = {"sha256": digest, "verdict": verdict, "part_id": part_id, "operator": operator, "at": _now()}
        with (self.store / "reviewed.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def _reviewed_images(self, verdict: str) -> list[np.ndarray]:
        seen, out = set(), []
        for r in self._reviewed():
            if r["verdict"] == verdict and r["sha256"] not in seen:
                seen.add(r["sha256"])
                out.append(_read_image(self.store / "reviewed" / f"{r['sha256']}.png"))
        return out

    def _model(self):
        import onnx

        try:
            return onnx.load(str(self.path))
        except Exception as exc:  # onnx raises DecodeError and others
            raise LearningError(f"{self.path}: not readable as ONNX ({exc})") from exc

    def _bank(self) -> tuple[np.ndarray, np.ndarray | None]:
        from onnx import numpy_helper

        inits = {i.name: i for i in self._model().graph.initializer}
        if BANK not in inits or BANK_SEARCH not in inits:
            raise LearningError(f"{self.path}: the graph has no {BANK!r}/{BANK_SEARCH!r} initializers "
                                "(a gate trained before the line could learn); train it again")
        bank = as_bank(numpy_helper.to_array(inits[BANK]))
        proj = numpy_helper.to_array(inits[BANK_PROJ]) if BANK_PROJ in inits else None
        return bank, proj

    def _features(self, rgb: np.ndarray) -> np.ndarray:
        """Patch features (P×C) of the image through the line's own graph."""
        w, h = self.gate.metadata.input_size
        return self.gate.session.patch_features(preprocess(rgb, w, h)[None])[0]

    def _new_patches(self, rgb: np.ndarray, bank: np.ndarray) -> np.ndarray:
        """Greedy k-centre over the image's patches, stopping at the floor; see `confirm_false_alarm`."""
        feats = self._features(rgb).astype(np.float64)
        dist = nearest_distances(feats, bank)
        floor = self.gate.metadata.heatmap_range[0]
        picked: list[int] = []
        while len(picked) < self.max_patches_per_image:
            i = int(np.argmax(dist))
            if dist[i] <= floor:
                break
            picked.append(i)
            dist = np.minimum(dist, np.sqrt(((feats - feats[i]) ** 2).sum(1)))
        return feats[picked].astype(np.float32)

    def _scores(self, session_gate: Gate, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros(0)
        return np.asarray([r.score for r in session_gate.score_batch(images)], dtype=np.float64)

    def _commit(self, action, bank: np.ndarray, proj, part_id: str, operator: str, patches_added: int) -> BankChange:
        import onnx
        from onnx import numpy_helper

        before = self.gate
        self._snapshot(before)
        model = self._model()
        replace = {BANK: bank, BANK_SEARCH: search_matrix(bank, proj)}
        for init in model.graph.initializer:
            if init.name in replace:
                init.CopyFrom(numpy_helper.from_array(replace[init.name], init.name))
        staging = self.store / "staging.onnx"
        onnx.save(model, str(staging))
        staging.chmod(FILE_MODE)
        from .gate import GateSession

        candidate = Gate(GateSession(staging, threads=self.threads), before.metadata)
        normal = self._scores(candidate, self._normal + self._reviewed_images("false_alarm"))
        defects = self._scores(candidate, self._reviewed_images("defect"))
        anomalous = np.r_[self._scores(candidate, self._anomalous), defects]
        cal = before.metadata.calibration
        if anomalous.size:
            target = cal.target if cal.method == "recall" else 0.95
            threshold, method = recall_threshold(anomalous, target), "recall"
            if defects.size:
                threshold = min(threshold, float(defects.min()))  # every confirmed defect stays flagged
        else:
            target, method = cal.target, "normal_quantile"
            threshold = quantile_threshold(normal, target)
        if not math.isfinite(threshold):
            raise LearningError(f"{self.path}: the re-derived threshold is not finite ({threshold})")
        calibration = Calibration(
            method=method, target=target, n_normal=int(normal.size), n_anomalous=int(anomalous.size),
            recall=float((anomalous >= threshold).mean()) if anomalous.size else None,
            normal_flag_rate=float((normal >= threshold).mean()) if normal.size else None,
            normal_quantile_threshold=quantile_threshold(
                normal, cal.target if cal.method == "normal_quantile" else NORMAL_QUANTILE) if normal.size else None,
        )
        digest = bank_digest(bank)
        training = dict(before.metadata.training)
        training.setdefault("n_bank_commissioned", int(before.metadata.model.get("bank_size", bank.shape[0])))
        training["learned_on_line"] = {"reviewed_false_alarms": len(self._reviewed_images("false_alarm")),
                                       "reviewed_defects": int(defects.size)}
        meta = before.metadata.model_copy(update={
            "onnx_sha256": sha256_file(staging), "threshold": threshold, "calibration": calibration,
            "model": {**before.metadata.model, "bank_size": int(bank.shape[0]), "bank_sha256": digest},
            "training": training,
        })
        meta_staging = self.store / "staging.json"
        write_metadata(meta, meta_staging)
        self._snapshot_files(staging, meta_staging, meta.onnx_sha256)
        self._install(staging, meta_staging, move=True)
        after = self.gate
        change = BankChange(
            action=action, at=_now(), part_id=part_id, operator=operator,
            onnx_sha256_before=before.metadata.onnx_sha256, onnx_sha256_after=meta.onnx_sha256,
            bank_sha256_before=before.bank_sha256 or "", bank_sha256_after=digest,
            bank_size_before=int(before.metadata.model.get("bank_size", 0)), bank_size_after=int(bank.shape[0]),
            patches_added=patches_added, threshold_before=before.threshold, threshold_after=after.threshold,
            normal_flag_rate=calibration.normal_flag_rate,
            reviewed_defects_flagged=int((defects >= threshold).sum()), reviewed_defects=int(defects.size),
        )
        self._append_history(change)
        return change

    def _snapshot(self, gate: Gate) -> None:
        self._snapshot_files(gate.path, metadata_path(gate.path), gate.metadata.onnx_sha256)

    def _snapshot_files(self, onnx_file: Path, meta_file: Path, digest: str) -> None:
        dest = self.store / "versions" / f"{digest}.onnx"
        if not dest.is_file():
            write_atomic(dest, onnx_file.read_bytes(), mode=FILE_MODE)
            write_atomic(dest.with_suffix(".json"), meta_file.read_bytes(), mode=FILE_MODE)

    def _install(self, onnx_src: Path, meta_src: Path, move: bool = False) -> None:
        """Replace the gate's files (graph first), then reload it."""
        if move:
            onnx_src.replace(self.path)
            meta_src.replace(metadata_path(self.path))
        else:
            tmp = self.path.with_name(f".{self.path.name}.undo")
            shutil.copyfile(onnx_src, tmp)
            tmp.chmod(FILE_MODE)
            tmp.replace(self.path)
            write_atomic(metadata_path(self.path), meta_src.read_bytes(), mode=FILE_MODE)
        self.gate = Gate.load(self.path, threads=self.threads)

    def _append_history(self, change: BankChange) -> None:
        with (self.store / "history.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(change)) + "\n")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
