"""How quickly the review dashboard takes in parts and draws a part's image (headless, 80×24).

    python bench/review_dashboard.py [--parts 5000] [--out bench/results/review_dashboard.json]

Measures: loading the station's history at connection (one batch of N parts, store + views);
taking in one more part while N are loaded (median over 50), on the run view (tile, shift counts
over every loaded part, filmstrip) and on the live feed; opening a part's detail screen with a
1280×960 image (decode on a worker thread + boxes + half-block cells); the half-block renderer alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.review_support import ScriptedSource, make_result


def _results(n: int):
    kinds = ("pass", "pass", "pass", "fail", "pass", "review")
    return [make_result(i, kinds[i % len(kinds)], camera=f"cam{i % 3}", minutes=i / 60) for i in range(1, n + 1)]


async def _measure(n: int, image_dir: Path) -> dict:
    from datetime import UTC, timedelta

    from PIL import Image

    from adfm.appliance.review.app import ReviewApp
    from adfm.appliance.review.render import halfblock_lines
    from adfm.appliance.review.sources import Results
    from adfm.appliance.review.widgets import PartImage
    from adfm.schema import Box

    results = _results(n + 50)
    history, later = results[:n], results[n:]
    # the clock just after the last part: every loaded part is in the shift the run view counts
    end = (results[-1].captured_at + timedelta(minutes=1)).timestamp()
    app = ReviewApp(ScriptedSource([]), operator="bench", tz=UTC, clock=lambda: end)
    out: dict = {}
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        t = time.perf_counter()
        app.apply(Results(history))
        app.refresh_views()
        out["load_history_ms"] = (time.perf_counter() - t) * 1000
        for view, batch in (("run_view", later[:25]), ("feed", later[25:])):
            if view == "feed":
                await pilot.press("3")
                await pilot.pause()
            steps = []
            for r in batch:
                t = time.perf_counter()
                app.apply(Results([r]))
                app.refresh_views()
                steps.append((time.perf_counter() - t) * 1000)
            if view == "run_view":  # the tile and the shift line did follow every part
                tile = str(app.screen.query_one("#run-tile").render())
                shift = str(app.screen.query_one("#run-shift").render())
                assert batch[-1].part_id in tile, tile
                assert f"{n + len(batch)} parts" in shift, shift
            out[f"one_more_part_{view}_ms_median"] = statistics.median(steps)
            out[f"one_more_part_{view}_ms_max"] = max(steps)

        big = image_dir / "big.png"
        Image.new("RGB", (1280, 960), (120, 120, 120)).save(big)
        part = later[-1].model_copy(update={"image_path": "big.png", "image_width": 1280, "image_height": 960,
                                            "boxes": [Box.from_xyxy([100, 100, 400, 300], "scratch")]})
        app.source.images = image_dir
        app.apply(Results([part]))
        t = time.perf_counter()
        app.open_part([part.seq], 0, from_queue=False)
        await pilot.pause()
        await app.workers.wait_for_complete()
        app.refresh_views()
        img = app.screen.query_one(PartImage)
        assert img.picture is not None, "the detail screen shows no picture"
        img._strips()
        out["open_detail_1280x960_ms"] = (time.perf_counter() - t) * 1000
    pil = Image.new("RGB", (1280, 960), (90, 90, 90))
    t = time.perf_counter()
    for _ in range(10):
        halfblock_lines(pil, 36, 17, part.boxes, (1280, 960))
    out["halfblock_36x17_from_1280x960_ms"] = (time.perf_counter() - t) * 100
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "review_dashboard.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(_measure(args.parts, Path(tmp)))
    report = {"bench": "review_dashboard", "parts_loaded": args.parts, "terminal": "80x24 headless",
              "machine": f"{platform.machine()} {platform.python_version()}",
              "load_average_1min_at_end": round(os.getloadavg()[0], 2),
              **{k: round(v, 2) for k, v in figures.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
