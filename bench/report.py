"""README's performance section, written from the JSON in bench/results/ (never typed by hand).

    python bench/report.py            # print the section
    python bench/report.py --write    # replace it in README.md, between the two markers

Ratios come first in every table: this is a shared 2-core machine, so absolute times move with the
load (given with each figure); ratios measured side by side in one run move far less.
tests/test_bench_report.py fails when README's section differs from what the JSON says.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BEGIN = "<!-- bench-report:begin (written by bench/report.py from bench/results/; do not edit) -->"
END = "<!-- bench-report:end -->"
WAY_NAMES = {"no_reference": "query only", "reference_fresh": "reference + query, fresh",
             "reference_reused": "reference + query, prefix reused"}


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def _loads(data: dict[str, Any]) -> str:
    start, end = data["machine"]["loadavg_start_end"]
    return f"load {start[0]:.1f} → {end[0]:.1f}"


def _provenance(data: dict[str, Any]) -> str:
    return f"`{data['command']}` ({data.get('date', '')[:10]}, {data['machine'].get('cpus')} CPUs, {_loads(data)})"


def _size(name: str) -> str:
    return name.replace("qwen2.5-vl-", "").upper()


def part_budget(results: Path) -> list[str]:
    runs = [json.loads(p.read_text()) for p in sorted(results.glob("part_budget-*.json"))]
    if not runs:
        return []
    out = ["### Per-part budget at released shapes (`bench/part_budget.py`)", "",
           "Random-weight exports with the published Qwen2.5-VL shapes (`bench/realistic_models.py`), q4_k_m + "
           "f16 mmproj, the worker's model call (`GgufVlm.generate`), fixed answer length. Prefix reuse keeps "
           "the system prompt and reference image in the KV cache; the ratio is paired within each round.", "",
           "| model | visual tokens per image | reused / fresh (rounds' range) | time saved | query only | "
           "reference, fresh | reference, reused |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        for b in run["budgets"]:
            r = b["reused_over_fresh"]
            ways = b["ways"]
            out.append(
                f"| {_size(run['model']['size'])} | {b['image_tokens_each']} | {r['median']:.2f} "
                f"({r['min']:.2f}–{r['max']:.2f}) | {b['time_saved_median']:.0%} | "
                + " | ".join(f"{ways[w]['seconds']['median']:.1f} s" for w in WAY_NAMES) + " |")
    out += ["", "Where the time goes (medians; prompt evaluation counts the positions evaluated, a reused "
            "prefix's excluded):", "",
            "| model | visual tokens | way | per part | vision encoder | prompt evaluation | generation |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        for b in run["budgets"]:
            for w, label in WAY_NAMES.items():
                s = b["ways"][w]
                out.append(
                    f"| {_size(run['model']['size'])} | {b['image_tokens_each']} | {label} | "
                    f"{s['seconds']['median']:.1f} s | {s['vision_s']['median']:.1f} s | "
                    f"{s['prompt_eval_s']['median']:.1f} s ({s['prompt_tokens_evaluated']} tokens, "
                    f"{s['prompt_eval_tokens_per_s']['median']:.0f}/s) | {s['generate_s']['median']:.1f} s "
                    f"({s['generation_tokens_per_s']['median']:.1f} tokens/s) |")
    out.append("")
    for run in runs:
        setup, probe = run["setup"], run.get("threads_probe")
        threads = (f"{setup['threads']} threads (fastest in the probe: "
                   + ", ".join(f"{k}: {v:.1f} s" for k, v in probe["seconds_per_part"].items()) + ")"
                   if probe else f"{setup['threads']} threads")
        rounds = f"{setup['rounds']} round{'s' if setup['rounds'] != 1 else ''}"
        out.append(f"- {_size(run['model']['size'])}: {rounds}, {setup['max_tokens']} answer tokens, "
                   f"{threads}, peak RSS {run['peak_rss_gb']} GB (two instances loaded: fresh and reusing); "
                   f"{_provenance(run)}")
    return [*out, ""]


def realistic_models(results: Path) -> list[str]:
    data = _load(results, "realistic_models.json")
    if not data or not data["models"]:
        return []
    out = ["### Building the released-shape exports (`bench/realistic_models.py`)", "",
           "| model | random-weight checkpoint | `adfm-export` (bfloat16, q4_k_m) | export peak RSS | files |",
           "| --- | --- | --- | --- | --- |"]
    for m in data["models"]:
        files = ", ".join(f"{name} {size / 1e9:.2f} GB" for name, size in m["files_bytes"].items())
        out.append(f"| {_size(m['size'])} | {m['checkpoint_seconds']:.0f} s | {m['export_seconds']:.0f} s | "
                   f"{m['export_peak_rss_gb']:.1f} GB | {files} |")
    out += [""] + [f"- {_size(m['size'])}: `{m['command']}` ({m['date'][:10]}, {data['machine']['cpus']} CPUs, "
                   f"{data['machine']['memory_gb']} GB, load {m['loadavg_start_end'][0][0]:.1f} → "
                   f"{m['loadavg_start_end'][1][0]:.1f})" for m in data["models"]] + [""]
    return out


def mmproj_types(results: Path) -> list[str]:
    data = _load(results, "mmproj_types.json")
    if not data:
        return []
    out = [f"### Vision encoder: mmproj f16 vs q8_0 (`bench/mmproj_types.py`, {_size(data['model']['size'])} shape)",
           "", "| threads, visual tokens | q8_0 / f16 time (median of medians; paired range) | f16 | q8_0 |",
           "| --- | --- | --- | --- |"]
    for key, r in data["q8_0_over_f16"].items():
        threads, tokens = key.split(", ")
        t = data["seconds"]
        f16 = sorted(t["f16"][threads.split()[0]][tokens.split()[0]])
        q8 = sorted(t["q8_0"][threads.split()[0]][tokens.split()[0]])
        out.append(f"| {key} | {r['median_q8_0_over_f16']:.2f} (paired {min(r['paired']):.2f}–{max(r['paired']):.2f}) "
                   f"| {f16[len(f16) // 2]:.2f} s | "
                   f"{q8[len(q8) // 2]:.2f} s |")
    errs = data["error_vs_hf_float32"]
    out += ["", "Image embeddings against the HF vision tower in float32 (max |Δ| / std; ‖Δ‖ / ‖reference‖): "
            + "; ".join(f"{kind} at {tokens} tokens {e['max_abs_over_std']:.2%}, {e['relative_l2']:.3%}"
                        for kind in ("f16", "q8_0") for tokens, e in errs[kind].items())
            + f". {_provenance(data)}", ""]
    return out


def prefix_reuse(results: Path) -> list[str]:
    data = _load(results, "prefix_reuse.json")
    if not data:
        return []
    r, s = data["ratio_reuse_over_fresh"], data["setup"]
    return ["### Prefix reuse on the tiny model (`bench/prefix_reuse.py`)", "",
            f"Reuse / fresh per part: median {r['median']:.2f} (95 % bootstrap CI {r['ci95'][0]:.2f}–"
            f"{r['ci95'][1]:.2f}) over {s['parts_per_side']} parts each side, alternating; greedy answers "
            f"identical {data['greedy_answers_identical']}; {s['image']} images ({s['image_tokens_each']} tokens "
            f"each, reference + query), {s['max_tokens']} answer tokens. {_provenance(data)}", ""]


def appliance_overhead(results: Path) -> list[str]:
    runs = [(name, _load(results, name)) for name in ("appliance_overhead-3b.json", "appliance_overhead.json")]
    runs = [(name, data) for name, data in runs if data]
    if not runs:
        return []
    out = ["### The appliance's overhead (`bench/appliance_overhead.py`)", "",
           "The real station service (journal, inference worker process, bus; a part timed from its trigger to "
           "a subscriber's receipt) against the same `GgufVlm` call made directly, interleaved in blocks, answers "
           "of one fixed length checked identical on both sides. Paired bootstrap 95 % intervals. Target: ≤ 2 % "
           "of per-part time at the 3B shape.", "",
           "| model | appliance / direct (CI) | overhead, % of part (CI) | paired difference per part (CI) | "
           "direct / appliance median | CPU overhead per part (CI) | identical answers |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, d in runs:
        a, c = d["appliance_vs_direct"], d["cpu"]["appliance_vs_direct"]
        st = d["settings"]
        model = "tiny" if d["model"].get("tiny") else Path(d["model"]["dir"]).name.split("-q")[0].replace(
            "qwen2.5-vl-", "").upper()
        out.append(
            f"| {model}, {st['grid'][0]}² grid, {st['max_tokens']} tokens, {st['n_threads']} threads, "
            f"camera {st['camera']} | {a['ratio_of_medians']:.3f} "
            f"({a['ratio_ci95'][0]:.3f}–{a['ratio_ci95'][1]:.3f}) | "
            f"{a['overhead_pct_of_part']:.1f} % ({a['overhead_pct_ci95'][0]:.1f}–{a['overhead_pct_ci95'][1]:.1f}) | "
            f"{a['paired_difference_ms_median']:.1f} ms ({a['paired_difference_ms_ci95'][0]:.1f}–"
            f"{a['paired_difference_ms_ci95'][1]:.1f}) | {d['direct_ms']['median']:.0f} / "
            f"{d['appliance_ms']['median']:.0f} ms | {c['paired_difference_ms_median']:.1f} ms "
            f"({c['paired_difference_ms_ci95'][0]:.1f}–{c['paired_difference_ms_ci95'][1]:.1f}) | "
            f"{d['identical_work']['answers_identical_on_every_side']} |")
    out.append("")
    for _, d in runs:
        m = d["machine"]
        out.append(f"- `{d['command']}` ({d['when'][:10]}, {m['cpus']} CPUs, load {m['load_avg_start'][0]:.1f} → "
                   f"{m['load_avg_end'][0]:.1f}, {d['settings']['parts_per_side']} parts per side)")
    return [*out, ""]


def bus_throughput(results: Path) -> list[str]:
    data = _load(results, "bus_throughput.json")
    if not data:
        return []
    labels = {"live-plain-1sub": "live, plain, 1 subscriber", "live-curve-1sub": "live, CURVE, 1 subscriber",
              "live-plain-10sub": "live, plain, 10 subscribers", "live-curve-10sub": "live, CURVE, 10 subscribers",
              "replay-plain-1sub": "replay (catch-up), plain", "replay-curve-1sub": "replay (catch-up), CURVE"}
    ratios = {"live-curve-1sub": "live-curve-1sub_over_live-plain-1sub",
              "live-curve-10sub": "live-curve-10sub_over_live-plain-10sub",
              "replay-curve-1sub": "replay-curve-1sub_over_replay-plain-1sub"}
    p = data["params"]
    out = ["### Result bus (`bench/bus_throughput.py`)", "",
           f"The product's `ResultBus` + `Journal` as the station and `StationClient` subscribers in separate "
           f"processes, loopback TCP, {p['results_per_round']:,} real results "
           f"({p['result_json_bytes']:,} bytes of JSON "
           f"each) per round, {p['rounds']} rounds interleaved; every subscriber must get every result once, in "
           "order. Target: ≥ 20,000 results/s with CURVE.", "",
           "| configuration | CURVE / plain (paired) | results/s, median (min–max) | all received | replayed | "
           "station / subscriber CPU per result |", "| --- | --- | --- | --- | --- | --- |"]
    for key, label in labels.items():
        s = data["summary"][key]
        r = s["results_per_s"]
        ratio = data["ratios_pct"].get(ratios.get(key, ""), None)
        rtext = f"{ratio['median']:.0f} % ({ratio['min']:.0f}–{ratio['max']:.0f})" if ratio else "–"
        out.append(f"| {label} | {rtext} | {r['median']:,.0f} ({r['min']:,.0f}–{r['max']:,.0f}) | "
                   f"{'yes' if s['all_received_every_round'] else 'NO'} | {s.get('replayed_total', '–')} | "
                   f"{s['station_cpu_us_per_result']['median']:.0f} / "
                   f"{s['subscriber_cpu_us_per_result_max']['median']:.0f} µs |")
    out += ["", f"Replayed: results a subscriber fetched from the journal because PUB dropped them at its send "
            f"high-water mark ({p['send_hwm']:,}). {_provenance(data)}", ""]
    return out


SECTIONS: list[Callable[[Path], list[str]]] = [part_budget, appliance_overhead, prefix_reuse, mmproj_types,
                                               bus_throughput, realistic_models]


def render(results: Path = RESULTS) -> str:
    lines = ["## Performance", "",
             "Written by `bench/report.py` from `bench/results/`; every figure names its command, date and the "
             "machine's load. Ratios first: this 2-core machine is shared, so absolute times move with the load.",
             ""]
    for section in SECTIONS:
        lines += section(results)
    return "\n".join(lines).rstrip() + "\n"


def replace_section(readme: str, section: str) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError(f"README must hold the markers once each: {BEGIN!r} … {END!r}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{section}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help=f"replace the section in {README.name}")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    section = render(args.results)
    if args.write:
        README.write_text(replace_section(README.read_text(), section))
    else:
        sys.stdout.write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
