"""The paper's figures and the Pareto front, from train.py's run logs and the summary.json that eval.py writes.

    python eval.py --runs runs/linear-s* runs/ctwa-s* --sweep runs/sweep-* --summary-dir results   # the numbers
    python plots.py --summary results/summary.json                                # the PNGs, beside summary.json
    fig1_objectives   objective curves per method (mean over seeds, band = ±1 std)         paper Fig. 1
    fig2_weights      CTWA's weights over training                                          paper Fig. 2
    fig3_covariance   per-objective Cov(reward, clipped advantage weight) per method        paper Fig. 3
    fig4_sensitivity  final objectives per CTWA covariance-target setting (the sweep)       paper Fig. 4
    fig5_pareto       final per-objective means across methods, Pareto front, hypervolume

summary.json names each method's run folders, whose metrics.jsonl give the curves of figures 1-3; its final values,
hypervolumes and Pareto front give figures 4 and 5, so every number drawn is one eval.py computed or one train.py
logged. A curve is eval/<name> (greedy, test split) when every run logged it, else the training batch mean
reward/<name> as a trailing mean over summary.json's `window` steps.
"""
import argparse
import json
import math
import os

import numpy as np
from matplotlib.figure import Figure  # a bare Figure, no pyplot: no display, no global state


def read_metrics(run_dir: str) -> list[dict]:
    """metrics.jsonl of a train.py run folder, one dict per step (the lines of one step merged, later wins)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run plots.py from the folder eval.py ran in, beside the runs")
    by_step = {}
    with open(path) as f:
        for row in map(json.loads, filter(str.strip, f)):
            by_step.setdefault(row["step"], {}).update(row)
    return [by_step[s] for s in sorted(by_step)]


def series(metrics: list, key: str, window: int = 1):
    """(steps, trailing mean over (s - window, s]) of a logged key. Step 0's eval/conciseness is dropped: before
    training there is no running mean, so train.py (like the reference, spec §4.3) counts every response concise."""
    pts = [(m["step"], float(m[key])) for m in metrics if isinstance(m.get(key), (int, float))
           and math.isfinite(m[key]) and not (key == "eval/conciseness" and m["step"] == 0)]
    s, v = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return list(s), [float(v[(s > t - window) & (s <= t)].mean()) for t in s]


def group_curve(runs: list, key: str, window: int):
    """Steps logged by every seed, mean and std (ddof 1) over seeds of the curve, or None; eval curves unsmoothed."""
    curves = [dict(zip(*series(m, key, 1 if key.startswith("eval/") else window))) for m in runs]
    curves = [c for c in curves if c]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return None
    v = np.array([[c[s] for s in steps] for c in curves])  # (seeds, steps)
    return np.array(steps), v.mean(0), v.std(0, ddof=1) if len(v) > 1 else np.zeros(len(steps))


# -------------------- figures (each saves a PNG and returns its matplotlib Figure) -----------------------------------
def _subplots(n, height, bottom=0.55):
    w = 4.2 * n  # inches; fixed margins (in inches) because tight_layout costs an extra draw per figure
    fig = Figure(figsize=(w, height))
    fig.subplots_adjust(left=0.75 / w, right=1 - 0.1 / w, bottom=bottom / height, top=1 - 0.6 / height, wspace=0.4)
    return fig, fig.subplots(1, n, squeeze=False)[0]


def _finish(fig, title, path):
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return fig


def _line_panels(rows, logs, names, keys, path, title, window, hlines=None):
    fig, axes = _subplots(len(names), 3.4)
    for ax, name, key in zip(axes, names, keys):
        for r in rows:
            curve = group_curve(logs[r["label"]], key, window)
            if curve is None:
                continue
            steps, mean, std = curve
            (line,) = ax.plot(steps, mean, label=r["label"])
            if len(logs[r["label"]]) > 1:
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            for y in (hlines or {}).get((r["label"], name), []):
                ax.axhline(y, color=line.get_color(), linestyle="--", linewidth=0.8)
        smoothed = "" if key.startswith("eval/") or window <= 1 else f", mean of {window} steps"
        ax.set(title=name, xlabel="step", ylabel=key + smoothed)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    return _finish(fig, title, path)


def plot_objectives(rows: list, logs: dict, path: str, window: int = 10):
    """Paper Fig. 1: one panel per objective plus response length, a line per method, ±1 std band over seeds.
    rows: summary.json's methods; logs: label -> the read_metrics of its runs."""
    names, runs = rows[0]["objectives"] + ["response_length"], [m for r in rows for m in logs[r["label"]]]
    # eval/<name> only when every run logged it, so a panel never mixes test and training curves
    keys = [f"eval/{n}" if all(any(f"eval/{n}" in row for row in m) for m in runs)
            else n if n == "response_length" else f"reward/{n}" for n in names]
    return _line_panels(rows, logs, names, keys, path, "objectives over training", window)


def plot_weights(rows: list, logs: dict, path: str):
    """Paper Fig. 2: CTWA's per-objective weights over training, a line per covariance-target setting."""
    objs, ctwa = rows[0]["objectives"], [r for r in rows if r["method"] == "ctwa"]
    if not any(series(m, f"weight/{o}")[0] for r in ctwa for m in logs[r["label"]] for o in objs):
        raise ValueError("plot_weights: no CTWA run with weight/<obj> in its log among the runs given")
    return _line_panels(ctwa, logs, objs, [f"weight/{o}" for o in objs], path, "CTWA weights", 1)


def plot_covariance(rows: list, logs: dict, path: str, window: int = 10):
    """Paper Fig. 3: Cov(reward_k, clipped advantage weight) per objective and method; dashed = CTWA's targets."""
    objs = rows[0]["objectives"]
    targets = {(r["label"], o): [t] for r in rows if r["targets"] for o, t in zip(objs, r["targets"])}
    keys = [f"cov/{o}" for o in objs]
    return _line_panels(rows, logs, objs, keys, path, "reward / advantage-weight covariance", window, targets)


def plot_sensitivity(rows: list, path: str):
    """Paper Fig. 4: final objectives per CTWA covariance-target setting (rows: summary.json's sweep)."""
    rows = sorted((r for r in rows if r["method"] == "ctwa"), key=lambda r: tuple(r["targets"] or ()))
    if not rows:
        raise ValueError("plot_sensitivity: no CTWA runs among the sweep runs given")
    names = rows[0]["objectives"] + ["response_length"]
    fig, axes = _subplots(len(names), 4.2, bottom=1.4)  # room for the rotated target labels
    x, colors = np.arange(len(rows)), ["tab:red" if min(r["targets"] or [0]) < 0 else "tab:blue" for r in rows]
    for ax, name in zip(axes, names):
        mean, std = np.array([r["final"][name] for r in rows]).T
        ax.bar(x, mean, yerr=std, capsize=3, color=colors)
        ax.set_xticks(x, [r["label"].removeprefix("ctwa ") for r in rows], rotation=45, ha="right", fontsize=7)
        ax.set(title=name, xlabel="covariance targets", ylabel=f"final {name}")
    return _finish(fig, "CTWA covariance-target sensitivity (red: a negative target)", path)


def plot_pareto(rows: list, front_hypervolume: float, path: str):
    """Final per-objective means per method on every pair of objectives; filled = on the Pareto front (all K)."""
    objs = rows[0]["objectives"]
    pairs = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs))]
    fig, axes = _subplots(len(pairs), 3.8)
    for ax, (i, j) in zip(axes, pairs):
        for k, r in enumerate(rows):
            p = [r["final"][o][0] for o in objs]
            ax.scatter(p[i], p[j], s=60, edgecolors=f"C{k % 10}", facecolors=f"C{k % 10}" if r["pareto"] else "none",
                       label=f"{r['label']} HV={r['hypervolume'][0]:.3f}")
        ax.set(xlabel=f"{objs[i]} (reward)", ylabel=f"{objs[j]} (reward)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    title = f"final Pareto front (filled = non-dominated), HV of the front = {front_hypervolume:.3f} (ref 0)"
    return _finish(fig, title, path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", default="results/summary.json", help="eval.py's summary.json (names the runs)")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: the folder of --summary)")
    args = parser.parse_args()
    with open(args.summary) as f:
        summary = json.load(f)
    out = args.out or os.path.dirname(os.path.abspath(args.summary))
    os.makedirs(out, exist_ok=True)
    rows, window = summary["methods"], summary["window"]
    figures = dict(fig5_pareto=lambda p: plot_pareto(rows, summary["front_hypervolume"], p))
    if summary.get("sweep"):
        figures["fig4_sensitivity"] = lambda p: plot_sensitivity(summary["sweep"], p)
    try:
        logs = {r["label"]: [read_metrics(run["dir"]) for run in r["runs"]] for r in rows}
        figures.update(fig1_objectives=lambda p: plot_objectives(rows, logs, p, window),
                       fig2_weights=lambda p: plot_weights(rows, logs, p),
                       fig3_covariance=lambda p: plot_covariance(rows, logs, p, window))
    except FileNotFoundError as e:  # a fresh clone has results/summary.json but not the runs: curves need them
        print(f"skipped the curves (fig1-fig3): {e}")
    for name, draw in sorted(figures.items()):
        try:
            draw(os.path.join(out, name + ".png"))
            print(f"wrote {os.path.join(out, name + '.png')}")
        except ValueError as e:  # e.g. no CTWA run among the runs: skip that figure and say why
            print(f"skipped {name}: {e}")
