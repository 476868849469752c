#!/usr/bin/python3
"""Scorecard of bench/headline.sh: each headline claim of compressed synchronization, its measured
ratio (against a baseline of the same run), its goal and whether the measurement meets it.

Usage: headline_scorecard.py DIR

Reads what DIR holds, skipping parts that were not run:
  DIR/1gbit/results.json, DIR/100mbit/results.json   bench/cluster_compare.sh (medians)
  DIR/accuracy/NAME.json                             `frugal train --summary` (dense.json is the
                                                     reference of the others)
  DIR/replay/replay.json                             `frugal bench replay --json`
Writes DIR/headline.json (one record per claim) and DIR/headline.md, and prints the table.

For the replay claims it also gives the ceiling: no strategy can end an iteration before backward
does, so none can beat a baseline by more than (the baseline's iteration) / (backward time).
"""

import json
import os
import sys

# (rate, cluster_compare configuration, baseline, goal as a ratio; None: reported, no goal)
THROUGHPUT_CLAIMS = [
    ("1gbit", "adtopk-safusion", "ddp", 1.8),
    ("1gbit", "adtopk-safusion", "sync-none", 0.9),
    ("1gbit", "ef-adtopk-safusion", "ddp", None),
    ("1gbit", "ef-adtopk-safusion", "sync-none", None),
    ("1gbit", "default", "ddp", None),
    ("1gbit", "default", "sync-none", None),
    ("100mbit", "adtopk-safusion", "ddp", 5.0),
    ("100mbit", "ef-adtopk-safusion", "ddp", None),
    ("100mbit", "default", "ddp", None),
]
# (summary file, spec shown, goal in points against dense; None: reported, no goal)
ACCURACY_CLAIMS = [
    ("ef-topk", "ef(topk:density=0.01)", -1.0),
    ("adtopk", "adtopk:density=0.01", -1.0),
    ("ef-dgc", "ef(dgc:density=0.01)", -1.0),
    ("ef-adtopk", "ef(adtopk:density=0.01)", None),
]
REPLAY_GOALS = {"none": 1.5, "omgs": 1.2}
RATE_NAMES = {"1gbit": "1 Gbit/s", "100mbit": "100 Mbit/s"}
BASELINE_NAMES = {"ddp": "PyTorch DDP", "sync-none": "`--sync none`"}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def claim(name, measured, goal, unit, ceiling=None, source=""):
    """One record; measured None means the run is missing or failed. The goal is a lower bound,
    but for a count of tensors, whose goal is 0."""
    if measured is None:
        verdict = "not measured"
    elif goal is None:
        verdict = "reported"
    else:
        met = measured == goal if unit == "tensors" else measured >= goal
        verdict = "met" if met else "missed"
    return {"claim": name, "measured": measured, "goal": goal, "unit": unit,
            "ceiling": ceiling, "verdict": verdict, "source": source}


def throughput_claims(out):
    records = []
    for rate, config, baseline, goal in THROUGHPUT_CLAIMS:
        results = load(os.path.join(out, rate, "results.json"))
        if results is None:
            continue
        row = results.get("medians", {}).get(rate, {}).get(config)
        ratio = row.get(f"ratio_to_{baseline.replace('-', '_')}") if row else None
        name = f"{RATE_NAMES[rate]}: {config} samples/s vs {BASELINE_NAMES[baseline]}"
        records.append(claim(name, ratio, goal, "x", source=f"{rate}/results.md"))
    return records


def accuracy_claims(out):
    dense = load(os.path.join(out, "accuracy", "dense.json"))
    if dense is None:
        return []
    records = []
    for name, spec, goal in ACCURACY_CLAIMS:
        summary = load(os.path.join(out, "accuracy", f"{name}.json"))
        delta = None
        if summary is not None:
            delta = 100.0 * (summary["test_accuracy"] - dense["test_accuracy"])
        records.append(claim(f"accuracy after 3 epochs: `{spec}` vs dense "
                             f"({100.0 * dense['test_accuracy']:.2f}%)", delta, goal, "points",
                             source=f"accuracy/{name}.json"))
    return records


def replay_claims(out):
    replay = load(os.path.join(out, "replay", "replay.json"))
    if replay is None:
        return []
    by_model = {}
    for record in replay["records"]:
        by_model.setdefault(record["model"], {})[record["fusion"]] = record
    records = []
    for model, rows in by_model.items():
        safusion = rows.get("safusion")
        for baseline, goal in REPLAY_GOALS.items():
            base = rows.get(baseline)
            ratio = ceiling = None
            if safusion and base:
                ratio = base["iteration_ms"] / safusion["iteration_ms"]
                ceiling = base["iteration_ms"] / safusion["backward_ms"]
            records.append(claim(f"replay {model}: safusion iterations/s vs `{baseline}`", ratio,
                                 goal, "x", ceiling, source="replay/replay.md"))
        if safusion and safusion.get("tensors_missing") is not None:
            omgs = rows.get("omgs", {}).get("missing_percent")
            records.append(claim(f"replay {model}: tensors missing per step with safusion"
                                 + (f" (omgs: {omgs:.1f}%)" if omgs is not None else ""),
                                 safusion["tensors_missing"], 0.0, "tensors",
                                 source="replay/replay.md"))
    return records


def show(value, unit, goal=None):
    """Two decimals, or three where two would round a missed goal up to it (1.497x, not 1.50x)."""
    if value is None:
        return "-"
    places = 3 if goal is not None and value < goal and round(value, 2) >= goal else 2
    if unit == "x":
        return f"{value:.{places}f}x"
    if unit == "points":
        return f"{value:+.{places}f}"
    return f"{value:g}"


def goal_text(record):
    goal, unit = record["goal"], record["unit"]
    if goal is None:
        return "-"
    if unit == "tensors":
        return "0"
    return f">= {show(goal, unit)}"


def markdown(records):
    lines = ["| claim | measured | goal | ceiling | verdict |", "|---|---:|---:|---:|---|"]
    for r in records:
        verdict = f"**{r['verdict']}**" if r["verdict"] == "missed" else r["verdict"]
        lines.append(f"| {r['claim']} | {show(r['measured'], r['unit'], r['goal'])} | {goal_text(r)} "
                     f"| {show(r['ceiling'], r['unit'])} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        sys.exit("usage: headline_scorecard.py DIR (a bench/headline.sh output folder)")
    out = argv[1]
    records = throughput_claims(out) + accuracy_claims(out) + replay_claims(out)
    if not records:
        sys.exit(f"headline_scorecard: {out} holds no results (run bench/headline.sh --out {out})")
    with open(os.path.join(out, "headline.json"), "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
    table = markdown(records)
    with open(os.path.join(out, "headline.md"), "w") as f:
        f.write(table)
    print(table, end="")


if __name__ == "__main__":
    main(sys.argv)
