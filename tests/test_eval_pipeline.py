"""The evaluation loop with a scripted backend (no model): items, images on the grid, failures, resuming."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adfm.geometry import ModelGrid
from adfm.protocol import format_response
from adfm.trainer.data.records import Sample, write_manifest
from adfm.trainer.evaluation.backends import Answer, Backend, BackendError, GenerationSettings, ModelInfo, Query
from adfm.trainer.evaluation.responses import ResponsesError, read_responses
from adfm.trainer.evaluation.vlm_eval import EvalConfig, EvalError, evaluate

BUDGET = (112 * 112, 224 * 224)


class ScriptedBackend(Backend):
    """Answers yes with one box on anomalous ids and no otherwise; can fail on chosen sample ids."""

    def __init__(self, fail_on: set[str] = frozenset(), interrupt_after: int | None = None, batch_size: int = 2):
        self.info = ModelInfo("transformers", "scripted@0", "multi-stage-v1", *BUDGET, Path("/scripted"))
        self.batch_size = batch_size
        self.fail_on = set(fail_on)
        self.interrupt_after = interrupt_after
        self.calls: list[list[Query]] = []

    def answer(self, queries: Sequence[Query], settings: GenerationSettings) -> list[Answer]:
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(list(queries))
        if any(q.key[0] in self.fail_on for q in queries):
            raise BackendError("prompt does not fit the context")
        out = []
        for q in queries:
            for img in q.images:  # every image arrives on the grid
                assert img.size[0] % 28 == 0 and img.size[1] % 28 == 0
            if q.key[1].startswith("mmad/"):
                text = "A"
            elif "bad" in q.key[0]:
                text = format_response(True, [[10, 10, 60, 60]])
            else:
                text = format_response(False)
            out.append(Answer(text, 100, 10, True, 0.01))
        return out

    def close(self) -> None:
        pass


def _image(path: Path, size=(150, 100), seed=0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(path)
    return str(path)


@pytest.fixture
def split(tmp_path: Path) -> Path:
    ref = _image(tmp_path / "ref.png", seed=9)
    samples = [
        Sample(id="d/c/test/good/0", image=_image(tmp_path / "g0.png", seed=1), dataset="d", category="c",
               split="test", label="normal", boxes=[], width=150, height=100, reference=ref),
        Sample(id="d/c/test/bad/0", image=_image(tmp_path / "b0.png", seed=2), dataset="d", category="c",
               split="test", label="anomalous", defect_type="bad", boxes=[[20, 20, 100, 80]], width=150,
               height=100, reference=ref),
        Sample(id="d/c/test/bad/1", image=_image(tmp_path / "b1.png", seed=3), dataset="d", category="c",
               split="test", label="anomalous", defect_type="bad", boxes=[[0, 0, 10, 10]], reference=ref),
        Sample(id="mmad/S/cat/test/bad/0", image=_image(tmp_path / "m0.png", seed=4), dataset="mmad",
               category="S/cat", split="test", label="anomalous", defect_type="bad", boxes=None,
               extra={"source": "S", "conversation": [
                   {"Question": "Any defect?", "Answer": "A", "Options": {"A": "Yes", "B": "No"},
                    "type": "Anomaly Detection"},
                   {"Question": "Which?", "Answer": "B", "Options": {"A": "crack", "B": "dent"},
                    "type": "Defect Classification"}]}),
    ]
    return write_manifest(samples, tmp_path / "split.jsonl")


def _cfg(split: Path, out: Path, **kw) -> EvalConfig:
    return EvalConfig(model=Path("/scripted"), split=split, out=out, progress=False, plots=False, **kw)


def test_every_item_is_asked_on_the_grid_with_its_reference(split, tmp_path):
    backend = ScriptedBackend()
    results = evaluate(_cfg(split, tmp_path / "out"), backend=backend)
    queries = [q for call in backend.calls for q in call]
    assert [q.key for q in queries] == [
        ("d/c/test/good/0", "inspect"), ("d/c/test/bad/0", "inspect"), ("d/c/test/bad/1", "inspect"),
        ("mmad/S/cat/test/bad/0", "inspect"), ("mmad/S/cat/test/bad/0", "mmad/0"),
        ("mmad/S/cat/test/bad/0", "mmad/1"),
    ]
    assert [len(q.images) for q in queries] == [2, 2, 2, 1, 1, 1]
    grid = ModelGrid.for_image(150, 100, *BUDGET)
    assert queries[0].images[1].size == (grid.width, grid.height)
    assert queries[0].inspection == ("multi-stage-v1", "c") and queries[4].inspection is None
    assert results["answers"] == {"items": 6, "answered": 6, "unanswered": 0, "with_reference": 3, "truncated": 0,
                                  "mean_completion_tokens": 10.0}
    ins = results["inspection"]["overall"]
    assert ins["accuracy"] == 1.0 and ins["n"] == 4
    assert results["mmad"]["pooled"]["Defect Classification"]["score"] == 0.0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["answers"]["answered"] == 6
    assert (tmp_path / "out" / "results.md").read_text().startswith("# adfm-eval: scripted@0")


def test_reference_off_and_task_selection(split, tmp_path):
    backend = ScriptedBackend()
    evaluate(_cfg(split, tmp_path / "out", reference="off", inspect=False, subtasks=["Anomaly Detection"]),
             backend=backend)
    queries = [q for call in backend.calls for q in call]
    assert [q.key for q in queries] == [("mmad/S/cat/test/bad/0", "mmad/0")]
    records, _ = read_responses(tmp_path / "out" / "responses.jsonl")
    assert all(r.reference is None for r in records)


def test_a_failing_item_is_isolated_and_listed(split, tmp_path):
    backend = ScriptedBackend(fail_on={"d/c/test/bad/0"})
    results = evaluate(_cfg(split, tmp_path / "out"), backend=backend)
    assert results["answers"]["answered"] == 5 and results["answers"]["unanswered"] == 1
    assert any("d/c/test/bad/0" in p and "does not fit" in p for p in results["problems"])
    # the batch it was in was retried one by one, so its neighbour was answered
    assert ("d/c/test/good/0", "inspect") in {q.key for call in backend.calls for q in call if len(call) == 1}


def test_a_model_that_fails_everything_stops_the_run(split, tmp_path, monkeypatch):
    from adfm.trainer.evaluation import vlm_eval

    monkeypatch.setattr(vlm_eval, "FAIL_FAST", 3)
    ids = {"d/c/test/good/0", "d/c/test/bad/0", "d/c/test/bad/1", "mmad/S/cat/test/bad/0"}
    with pytest.raises(EvalError, match="the first 3 items all failed; the last: prompt does not fit"):
        evaluate(_cfg(split, tmp_path / "out"), backend=ScriptedBackend(fail_on=ids))


def test_unreadable_and_mismatched_images_are_named(split, tmp_path):
    lines = split.read_text().splitlines()
    bad = json.loads(lines[0])
    Path(bad["image"]).write_bytes(b"not a png")
    wrong = json.loads(lines[1])
    wrong["width"] = 640
    split.write_text("\n".join([json.dumps(bad), json.dumps(wrong), *lines[2:]]) + "\n")
    results = evaluate(_cfg(split, tmp_path / "out"), backend=ScriptedBackend())
    problems = "\n".join(results["problems"])
    assert "g0.png" in problems and "unreadable image" in problems
    assert "b0.png" in problems and "640x100" in problems and "150x100" in problems
    assert results["answers"]["unanswered"] == 2


def test_an_interrupted_run_resumes_where_it_stopped(split, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        evaluate(_cfg(split, out), backend=ScriptedBackend(interrupt_after=2))
    assert len(read_responses(out / "responses.jsonl")[0]) == 4  # two batches of two were saved
    backend = ScriptedBackend()
    results = evaluate(_cfg(split, out), backend=backend)
    assert [q.key[1] for call in backend.calls for q in call] == ["mmad/0", "mmad/1"]
    assert results["this_invocation"]["asked"] == 2 and results["this_invocation"]["already_answered"] == 4
    assert results["answers"]["answered"] == 6


def test_answers_about_other_images_are_asked_again(split, tmp_path):
    out = tmp_path / "out"
    evaluate(_cfg(split, out), backend=ScriptedBackend())
    lines = [json.loads(x) for x in split.read_text().splitlines()]
    lines[0]["image"] = _image(tmp_path / "g0-new.png", seed=11)  # the split was rebuilt: same id, new file
    lines[1]["reference"] = None
    split.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    backend = ScriptedBackend()
    results = evaluate(_cfg(split, out), backend=backend)
    assert [q.key for call in backend.calls for q in call] == [("d/c/test/good/0", "inspect"),
                                                               ("d/c/test/bad/0", "inspect")]
    assert results["answers"]["answered"] == 6 and results["answers"]["with_reference"] == 2


def test_another_run_in_the_same_folder_is_refused_unless_fresh(split, tmp_path):
    out = tmp_path / "out"
    evaluate(_cfg(split, out, max_new_tokens=64), backend=ScriptedBackend())
    with pytest.raises(ResponsesError, match="max_new_tokens: 64 → 32"):
        evaluate(_cfg(split, out, max_new_tokens=32), backend=ScriptedBackend())
    results = evaluate(_cfg(split, out, max_new_tokens=32, fresh=True), backend=ScriptedBackend())
    assert results["this_invocation"]["asked"] == 6
    assert len(list(out.glob("responses.*.bak.jsonl"))) == 1


def test_bad_splits_and_options_are_named(split, tmp_path):
    with pytest.raises(EvalError, match="split manifest not found"):
        evaluate(_cfg(tmp_path / "missing.jsonl", tmp_path / "out"), backend=ScriptedBackend())
    dup = tmp_path / "dup.jsonl"
    line = split.read_text().splitlines()[0]
    dup.write_text(line + "\n" + line + "\n")
    with pytest.raises(EvalError, match="appears twice"):
        evaluate(_cfg(dup, tmp_path / "out"), backend=ScriptedBackend())
    with pytest.raises(ValueError, match="unknown MMAD subtasks"):
        _cfg(split, tmp_path / "out", subtasks=["Defect Counting"])
    with pytest.raises(ValueError, match="nothing to ask"):
        _cfg(split, tmp_path / "out", inspect=False, mmad=False)
