"""The README's screenshots of adfm-review (SVG, through Textual's own screenshot), made from the
same fixed parts as the snapshot tests:

    PYTHONPATH=. python -m tests.review_screenshots docs/review

Writes run-view.svg (120×36, the size of the operators' trial) and, at 80×24, run-view-80x24.svg,
queue.svg, part-heat-map.svg, draw-box.svg and refused-verdict.svg into the folder given.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import UTC, time
from pathlib import Path

from adfm.appliance.review.app import ReviewApp
from adfm.appliance.review.sources import Results
from adfm.schema import Box
from tests.review_support import (
    NOW,
    ScriptedSource,
    fixed_results,
    make_result,
    settle,
    standard_events,
    write_gate_map,
    write_part_image,
)
from tests.test_review_run_view import REFUSAL

SHOTS = (
    ("run-view.svg", (120, 36), ()),
    ("run-view-80x24.svg", (80, 24), ()),
    ("queue.svg", (80, 24), ("2",)),
    ("part-heat-map.svg", (80, 24), ("enter", "h")),
    ("draw-box.svg", (80, 24), ("2", "down", "enter", "b", "right", "right", "shift+down")),
    ("refused-verdict.svg", (80, 24), ("2", "enter", "f")),
)


def newest_rejected(images: Path) -> Results:
    """An eleventh part, rejected with a box: what the run view looks like when the line finds one."""
    write_part_image(images / "p11.png", seed=11)
    r = make_result(11, "fail", camera="cam1", image_path="p11.png")
    return Results([r.model_copy(update={"boxes": [Box.from_xyxy([12, 24, 58, 40], "scratch")],
                                         "gate_score": 0.91, "decision_source": "vlm"})])


async def shoot(images: Path, out: Path, name: str, size: tuple[int, int], keys: tuple[str, ...]) -> Path:
    events = [*standard_events(images), *([newest_rejected(images)] if name.startswith("run-view") else [])]
    source = ScriptedSource(events, images=images, refuse=REFUSAL if "refused" in name else "")
    app = ReviewApp(source, operator="anna", tz=UTC, clock=lambda: NOW, shifts=[time(6), time(14), time(22)])
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        return Path(app.save_screenshot(name, str(out)))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.review_screenshots OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp)
        for r in fixed_results():
            write_part_image(images / f"p{r.seq}.png", seed=r.seq)
        write_gate_map(images / "p9.gate.png")
        for name, size, keys in SHOTS:
            print(asyncio.run(shoot(images, out, name, size, keys)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
