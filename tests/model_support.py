"""Two honest, deterministic models for the model-rollout tests. Test-only code.

A "rule model" is an exported model directory (manifest with sizes and sha256) whose language-model
file holds one number, a brightness threshold; its backend answers in the trained answer format,
`yes` (with one box over the whole image) when the query image's mean pixel value is above the
threshold, `no` otherwise. Two rule models with different thresholds are two models with different
content hashes (so different model ids) that disagree exactly on the parts whose brightness lies
between their thresholds — which a test counts independently from the journaled images.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tests.appliance_fakes import MAX_PIXELS, MIN_PIXELS, FakeGeneration

RULE_FACTORY = "tests.model_support:make_rule_backend"


def make_rule_model(path: Path, threshold: float, prompt_version: str = "multi-stage-v1") -> Path:
    from adfm.manifest import FileEntry, ModelManifest, sha256_file, write_manifest

    path.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, role, body in (("rule.gguf", "model", json.dumps({"threshold": threshold})),
                             ("mmproj-rule.gguf", "mmproj", "no projector: the rule reads pixels")):
        f = path / name
        f.write_text(body)
        entries.append(FileEntry(path=name, role=role, sha256=sha256_file(f), size=f.stat().st_size))
    write_manifest(ModelManifest(files=entries, base_model="rule", prompt_version=prompt_version,
                                 min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, adfm_version="test",
                                 created_at=datetime.now(UTC)), path)
    return path


def rule_threshold(model_dir: Path) -> float:
    from adfm.manifest import read_manifest

    m = read_manifest(model_dir)
    return float(json.loads((Path(model_dir) / m.file("model").path).read_text())["threshold"])


def rule_says_defect(image: np.ndarray, threshold: float) -> bool:
    return float(np.asarray(image, dtype=np.float64).mean()) > threshold


class RuleBackend:
    def __init__(self, model_dir: str, **_ignored: object) -> None:
        self.threshold = rule_threshold(Path(model_dir))

    def generate(self, images, *, prompt_version=None, product=None, max_tokens=256, temperature=0.0, seed=0):
        from adfm.protocol import format_response

        query = np.asarray(images[-1].convert("RGB"))
        h, w = query.shape[:2]
        version = prompt_version or "multi-stage-v1"
        if rule_says_defect(query, self.threshold):
            text = format_response(True, [[0, 0, w - 1, h - 1]], ["bright"], version=version)
        else:
            text = format_response(False, [], version=version)
        return FakeGeneration(text=text, prompt_tokens=100, completion_tokens=20, seconds=0.001)


def make_rule_backend(**kwargs):
    """The worker's factory (`tests.model_support:make_rule_backend`), given the model's directory."""
    return RuleBackend(**kwargs)
