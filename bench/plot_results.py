#!/usr/bin/python3
"""Plots of Frugal's benchmark results as SVG (matplotlib, Agg backend; python3-matplotlib).

Subcommands:
  cluster RESULTS.json [--out-dir DIR]
      The results of bench/cluster_compare.sh: DIR/throughput.svg (samples/s of every
      configuration at every rate, grouped bars, median over repeats) and DIR/loss_vs_time.svg
      (rank 0's training loss against training time, one panel per rate, from each Frugal run's
      --metrics JSON lines; the DDP baseline writes none). DIR defaults to RESULTS.json's folder.
  ckpt --json FILE --out FILE.svg
      The JSON of `frugal bench ckpt`: training stall per save (p50, p99) of the sync and async
      modes, and the throughputs of the disk baseline, the persists and the restores.
  bars --json FILE --x KEY --y KEY [--group KEY] --out FILE.svg [--where KEY=VALUE]...
      A grouped bar chart of any benchmark's records: FILE is a JSON array of objects, JSON lines,
      or an object holding such an array (--records KEY names it; else the first list of objects).
      KEYs may be dotted paths ("summary.samples_per_s"). Records with the same x and group are
      reduced to their median.

As a module: grouped_bars() draws (labels, series) into an SVG (draw_grouped_bars() onto an
axes); load_records() and bars_from_records() turn benchmark JSON into those;
plot_cluster_results() does `cluster`, plot_ckpt_results() does `ckpt`.
"""

import argparse
import json
import math
import os
import statistics
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

# Reproducible SVGs: the same data gives the same file (no random ids, no date).
plt.rcParams["svg.hashsalt"] = "frugal"
SVG_METADATA = {"Date": None}


def _save(fig, out_path):
    fig.tight_layout()
    fig.savefig(out_path, format="svg", metadata=SVG_METADATA)
    plt.close(fig)
    print(f"written: {out_path}")


def _check_bars(labels, series):
    if not labels or not series:
        raise ValueError("grouped_bars: nothing to draw (no labels or no series)")
    for name, values in series.items():
        if len(values) != len(labels):
            raise ValueError(f"grouped_bars: series {name!r} has {len(values)} values for "
                             f"{len(labels)} labels")


def draw_grouped_bars(ax, labels, series, *, title="", xlabel="", ylabel="", log_y=False,
                      value_format="{:.3g}"):
    """Draws one group of bars per label, one bar per series, on the matplotlib axes ax.

    labels: the categories along x. series: {series name: [value per label]} (dict order is
    the bar order); a value of None leaves its bar out. Each bar carries its value on top.
    """
    _check_bars(labels, series)
    n = len(series)
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        present = [(x, v) for x, v in zip(xs, values) if v is not None and math.isfinite(v)]
        if not present:
            continue
        bars = ax.bar([x for x, _ in present], [v for _, v in present], width, label=str(name))
        ax.bar_label(bars, labels=[value_format.format(v) for _, v in present], fontsize=7,
                     padding=1)
    ax.set_xticks(range(len(labels)), [str(label) for label in labels])
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if n > 1 or next(iter(series)) != "":
        ax.legend(fontsize=8)


def grouped_bars(out_path, labels, series, *, title="", xlabel="", ylabel="", log_y=False,
                 value_format="{:.3g}", note=""):
    """draw_grouped_bars into the SVG file out_path, sized to the bars; note, if any, is printed
    under the chart."""
    _check_bars(labels, series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + len(labels) * (0.5 + 0.45 * len(series))),
                                    4.5))
    draw_grouped_bars(ax, labels, series, title=title,
                      xlabel=xlabel + ("\n" + textwrap.fill(note, 90) if note else ""),
                      ylabel=ylabel, log_y=log_y, value_format=value_format)
    _save(fig, out_path)


def get_path(record, path):
    """record["a"]["b"] for path "a.b"; None when any part is missing."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def load_records(path, records_key=None):
    """The list of objects in a JSON array, a JSON-lines file or an object holding a list."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise SystemExit(f"plot_results: cannot read {path}: {e.strerror}")
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as e:
            raise SystemExit(f"plot_results: {path} is neither JSON nor JSON lines: {e}")
    if isinstance(data, dict):
        if records_key is not None:
            data = get_path(data, records_key)
            if not isinstance(data, list):
                raise SystemExit(f"plot_results: {path} has no list at {records_key!r}")
        else:
            lists = [v for v in data.values()
                     if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
            if not lists:
                raise SystemExit(f"plot_results: {path} holds no list of records; "
                                 "pass --records KEY")
            data = lists[0]
    if not isinstance(data, list):
        raise SystemExit(f"plot_results: {path} holds no list of records")
    return [r for r in data if isinstance(r, dict)]


def bars_from_records(records, x, y, group=None):
    """(labels, series) for grouped_bars: the median y of the records at each (x, group)."""
    cells, labels, groups = {}, [], []
    for r in records:
        xv, yv = get_path(r, x), get_path(r, y)
        gv = get_path(r, group) if group else ""
        if xv is None or not isinstance(yv, (int, float)) or isinstance(yv, bool):
            continue
        if xv not in labels:
            labels.append(xv)
        if gv not in groups:
            groups.append(gv)
        cells.setdefault((xv, gv), []).append(float(yv))
    series = {g: [statistics.median(cells[(xv, g)]) if (xv, g) in cells else None
                  for xv in labels] for g in groups}
    return labels, series


def _loss_curve(metrics_path):
    """(seconds, losses, exact) of one run's step records; exact is False when the step records
    carry no train_s and the time is estimated as step x mean step time."""
    with open(metrics_path) as f:
        steps = [r for r in map(json.loads, filter(str.strip, f)) if r.get("type") == "step"]
    if not steps:
        return [], [], True
    if all("train_s" in r for r in steps):
        return [r["train_s"] for r in steps], [r["loss"] for r in steps], True
    mean_s = statistics.mean(r["step_ms"] for r in steps if "step_ms" in r) * 1e-3
    return [r["step"] * mean_s for r in steps], [r["loss"] for r in steps], False


def _smooth(values):
    """Exponential moving average over about a twentieth of the curve (at least 1 point)."""
    alpha = min(1.0, 20.0 / max(len(values), 1))
    out, average = [], None
    for v in values:
        average = v if average is None else alpha * v + (1 - alpha) * average
        out.append(average)
    return out


def plot_cluster_results(results_path, out_dir=None):
    """throughput.svg and loss_vs_time.svg of a bench/cluster_compare.sh results.json."""
    base = os.path.dirname(os.path.abspath(results_path))
    out_dir = out_dir or base
    os.makedirs(out_dir, exist_ok=True)
    with open(results_path) as f:
        results = json.load(f)
    config = results.get("config", {})
    rates = config.get("rates") or sorted({r["rate"] for r in results["runs"]})
    names = []
    for run in results["runs"]:
        if run["name"] not in names:
            names.append(run["name"])

    ok_runs = [r for r in results["runs"] if r.get("summary") is not None]
    labels, series = bars_from_records(ok_runs, "rate", "summary.samples_per_s", "name")
    order = {rate: i for i, rate in enumerate(rates)}
    index = sorted(range(len(labels)), key=lambda i: order.get(labels[i], len(order)))
    labels = [labels[i] for i in index]
    series = {name: [series[name][i] for i in index] for name in names if name in series}
    title = (f"{config.get('ranks', '?')} emulated hosts, {config.get('model', '?')}, batch "
             f"{config.get('batch_size', '?')} per host")
    ok_cells = {(r["name"], r["rate"]) for r in ok_runs}
    failed = {}  # name -> rates where every repeat failed
    for r in results["runs"]:
        if (r["name"], r["rate"]) not in ok_cells and r["rate"] not in failed.get(r["name"], []):
            failed.setdefault(r["name"], []).append(r["rate"])
    failed = [f"{name} ({', '.join(rs)})" for name, rs in failed.items()]
    if labels:
        grouped_bars(os.path.join(out_dir, "throughput.svg"), labels, series, title=title,
                     xlabel="link rate (each way, per host)",
                     ylabel="samples/s (all hosts; median of repeats)", value_format="{:.0f}",
                     note="failed, no bar: " + "; ".join(failed) if failed else "")
    else:
        print("plot_results: no successful run: throughput.svg not drawn", file=sys.stderr)

    curves = {}  # rate -> name -> curve of the first repeat that has metrics
    for run in sorted(ok_runs, key=lambda r: r["repeat"]):
        path = run.get("metrics_path")
        if not path or run["name"] in curves.get(run["rate"], {}):
            continue
        path = os.path.join(base, path)
        if os.path.exists(path):
            curve = _loss_curve(path)
            if curve[0]:
                curves.setdefault(run["rate"], {})[run["name"]] = curve
    if not curves:
        print("plot_results: no run wrote metrics: loss_vs_time.svg not drawn", file=sys.stderr)
        return
    panels = [rate for rate in rates if rate in curves]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.5, 5.5 * len(panels)), 4.5),
                             squeeze=False, sharey=True)
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    exact = all(c[2] for by_name in curves.values() for c in by_name.values())
    for ax, rate in zip(axes[0], panels):
        for name, (seconds, losses, _) in curves[rate].items():
            ax.plot(seconds, losses, color=colors[name], linewidth=0.6, alpha=0.35)
            ax.plot(seconds, _smooth(losses), label=name, color=colors[name], linewidth=1.5)
        ax.set_title(rate)
        ax.set_xlabel("training time, s (evaluation excluded)" if exact else
                      "step x mean step time, s (no per-step time in the metrics)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("training loss of rank 0's batches\n(faint: raw; bold: moving average)")
    fig.suptitle(textwrap.fill(f"{title}: loss against time (Frugal runs; the DDP baseline logs "
                               "no metrics)", 110), fontsize=10)
    _save(fig, os.path.join(out_dir, "loss_vs_time.svg"))


def plot_ckpt_results(json_path, out_path):
    """The `frugal bench ckpt --json` file as one SVG: the training stall per save (p50, p99) of
    each checkpointing mode, and the throughputs (disk write + fsync, persist, restore)."""
    with open(json_path) as f:
        result = json.load(f)
    run = result["run"]
    modes = [m for m in result["modes"] if m["mode"] != "none"]
    fig, (stall_ax, rate_ax) = plt.subplots(1, 2, figsize=(13, 5),
                                            gridspec_kw={"width_ratios": [1, 2]})
    draw_grouped_bars(stall_ax, [m["mode"] for m in modes],
                      {"p50": [m["stall_p50_ms"] for m in modes],
                       "p99": [m["stall_p99_ms"] for m in modes]},
                      title="training stall per save", ylabel="ms (log)", log_y=True,
                      value_format="{:.1f}")
    # Bars on a log axis start at its bottom: put it well below the smallest stall.
    stalls = [v for m in modes for v in (m["stall_p50_ms"], m["stall_p99_ms"]) if v > 0]
    if stalls:
        stall_ax.set_ylim(bottom=min(stalls) / 5)
    rates = [("disk\n" + d["when"], d["gbps"]) for d in result["disk"]]
    rates += [("persist\n" + m["mode"], m["persist_gbps"]) for m in modes]
    rates += [("restore\n" + r["label"].removeprefix("restore, ").replace(", ", "\n"), r["gbps"])
              for r in result["restores"]]
    draw_grouped_bars(rate_ax, [label for label, _ in rates], {"": [v for _, v in rates]},
                      title="throughput", ylabel="GB/s", value_format="{:.2f}")
    rate_ax.tick_params(axis="x", labelsize=7)
    targets = result["targets"]
    fig.suptitle(textwrap.fill(
        f"Checkpoints of {run['state_bytes'] / 1e9:.2f} GB on {run['ranks']} ranks, a save every "
        f"{run['steps_between_saves']} steps: async stall / sync save = "
        f"{targets['stall_ratio']:.3f} (target <= {targets['stall_ratio_max']}), persist / disk "
        f"= {targets['persist_ratio']:.2f} (target >= {targets['persist_ratio_min']})", 120),
        fontsize=10)
    _save(fig, out_path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cluster", help="plots of a bench/cluster_compare.sh results.json")
    c.add_argument("results", help="results.json written by bench/cluster_compare.sh")
    c.add_argument("--out-dir", help="where the SVGs go (default: beside results.json)")
    b = sub.add_parser("bars", help="grouped bar chart of any benchmark's JSON records")
    b.add_argument("--json", required=True, help="JSON array, JSON lines or object with a list")
    b.add_argument("--records", help="dotted key of the list inside a JSON object")
    b.add_argument("--x", required=True, help="key of the categories along x")
    b.add_argument("--y", required=True, help="key of the bar heights (numbers)")
    b.add_argument("--group", help="key whose values become the bars within a category")
    b.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="keep only records whose KEY equals VALUE (as text); repeatable")
    b.add_argument("--out", required=True, help="SVG file to write")
    b.add_argument("--title", default="")
    b.add_argument("--ylabel", help="default: the --y key")
    b.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    k = sub.add_parser("ckpt", help="stall and throughput plot of `frugal bench ckpt --json`")
    k.add_argument("--json", required=True, help="file written by frugal bench ckpt --json")
    k.add_argument("--out", required=True, help="SVG file to write")
    args = p.parse_args(argv)

    if args.command == "ckpt":
        try:
            plot_ckpt_results(args.json, args.out)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"plot_results: cannot plot {args.json}: {type(e).__name__}: {e}")
        return
    if args.command == "cluster":
        try:
            plot_cluster_results(args.results, args.out_dir)
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"plot_results: cannot plot {args.results}: {type(e).__name__}: {e}")
        return
    records = load_records(args.json, args.records)
    for condition in args.where:
        key, sep, value = condition.partition("=")
        if not sep:
            p.error(f"--where {condition!r} is not KEY=VALUE")
        records = [r for r in records if str(get_path(r, key)) == value]
    labels, series = bars_from_records(records, args.x, args.y, args.group)
    if not labels:
        raise SystemExit(f"plot_results: no record of {args.json} has both {args.x!r} and a "
                         f"number at {args.y!r}")
    grouped_bars(args.out, labels, series, title=args.title, xlabel=args.x,
                 ylabel=args.ylabel or args.y)


if __name__ == "__main__":
    main()
