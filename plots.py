"""The paper's figures, the Pareto front and the covariance-law test, from report.py's summary.json and train.py's logs.

    python report.py --runs runs/linear-s* runs/ctwa-s* --sweep runs/sweep-* --out results   # the numbers
    python plots.py --summary results/summary.json --out results                  # the PNGs (default: beside it)
    fig1_objectives   objectives over training, methods grouped by level (mean over runs, band ±1 std)   paper Fig. 1
    fig2_controller   each CTWA row: its weights, its statistic against the dashed targets, the objectives   Fig. 2
    fig3_covariance   Cov(r_k, clipped advantage weight) per objective, methods grouped by level        paper Fig. 3
    fig4_sensitivity  final objectives per CTWA setting of the sweep (targets and λ), 95% intervals     paper Fig. 4
    fig5_pareto       final means across methods on every pair of objectives, Pareto front, hypervolume
    fig6_law          the covariance law: how often (a) Cov and (b) <g_k, step> have the sign of the realised probe
                      change (c), their rank correlation with it, and (a), (b) against (c) step by step for one method

Every method keeps one colour, line style and marker in every figure (line_styles), a panel holds at most 6 lines
(linear, the reference, in each) and legends sit beside the axes, never on the data. summary.json names each row's run
folders; figures 1-3 and fig6's scatter read their metrics.jsonl and skip the folders that are not here (a fresh clone
has results/ only); figures 4-6's bars need only summary.json. A curve is eval/<name> (greedy, test split) when every
run logged it, else the training batch mean reward/<name> as a trailing mean over summary.json's `window` steps.
"""
import argparse
import json
import math
import os

import numpy as np
from matplotlib.figure import Figure  # a bare Figure, no pyplot: no display, no global state
from matplotlib.lines import Line2D

COLORS = [f"C{i}" for i in range(10)] + ["k", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]
LINESTYLES, MARKERS = ["-", "--", "-.", ":"], "os^Dv<>pPX*h"
OBJECTIVE_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]  # fig2 and fig6 colour objectives, not methods
LAMBDA_GREYS = ["#7a7a7a", "#c4c4c4", "#9f9f9f", "#e0e0e0"]  # fig4 shades its bars by CTWA's λ
PANEL_LINES = 6


def line_styles(rows: list) -> dict:
    """label -> colour, line style and marker, by first appearance, so a method looks the same in every figure."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    return {lab: dict(color=COLORS[i % len(COLORS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                      marker=MARKERS[i % len(MARKERS)]) for i, lab in enumerate(labels)}


def read_metrics(run_dir: str) -> list[dict]:
    """metrics.jsonl of a train.py run folder, one dict per step (the lines of one step merged, later wins)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        text = f.read()
    by_step = {}
    for row in map(json.loads, filter(str.strip, text[:text.rfind("\n") + 1].splitlines())):  # no half-written line
        by_step.setdefault(row["step"], {}).update(row)
    return [by_step[s] for s in sorted(by_step)]


def read_logs(rows: list):
    """(label -> the read_metrics of its runs that are here, the run folders that are not)."""
    logs, missing = {}, []
    for r in rows:
        for run in r["runs"]:
            if os.path.isfile(os.path.join(run["dir"], "metrics.jsonl")):
                logs.setdefault(r["label"], []).append(read_metrics(run["dir"]))
            else:
                missing.append(run["dir"])
    return logs, list(dict.fromkeys(missing))


def series(metrics: list, key: str, window: int = 1):
    """(steps, trailing mean over (s - window, s]) of a logged key. Step 0's eval/conciseness is dropped: before
    training there is no running mean, so train.py (like the reference, spec §4.3) counts every response concise."""
    pts = [(m["step"], float(m[key])) for m in metrics if isinstance(m.get(key), (int, float))
           and math.isfinite(m[key]) and not (key == "eval/conciseness" and m["step"] == 0)]
    s, v = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return list(s), [float(v[(s > t - window) & (s <= t)].mean()) for t in s]


def group_curve(runs: list, key: str, window: int):
    """Steps logged by every run, mean and std (ddof 1) over runs of the curve, or None; eval curves unsmoothed."""
    curves = [dict(zip(*series(m, key, 1 if key.startswith("eval/") else window))) for m in runs]
    curves = [c for c in curves if c]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return None
    v = np.array([[c[s] for s in steps] for c in curves])  # (runs, steps)
    return np.array(steps), v.mean(0), v.std(0, ddof=1) if len(v) > 1 else np.zeros(len(steps))


def curve_keys(names: list, runs: list) -> list[str]:
    """eval/<name> when every run logged it, else the training curve, so a panel never mixes test and training."""
    return [f"eval/{n}" if runs and all(any(f"eval/{n}" in row for row in m) for m in runs)
            else n if n == "response_length" else f"reward/{n}" for n in names]


def panel_groups(rows: list, size: int = PANEL_LINES) -> list:
    """(title, rows) per row of panels: reward, advantage and gradient level, then CTWA, each with linear as the
    reference and split so that no panel holds more than `size` lines."""
    ref = [r for r in rows if r["label"] == "linear"][:1]
    groups = []
    for level in ("reward", "advantage", "gradient", "ctwa"):
        members = [r for r in rows if r not in ref and (r["method"] == "ctwa") == (level == "ctwa")
                   and (level == "ctwa" or r["level"] == level)]
        chunks = [members[i:i + size - len(ref)] for i in range(0, len(members), size - len(ref))]
        name = "CTWA" if level == "ctwa" else f"{level} level"
        groups += [(name + (f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""), ref + c)
                   for k, c in enumerate(chunks)]
    return groups or [("", ref)]


# -------------------- figures (each saves a PNG and returns its matplotlib Figure) -----------------------------------
def _grid(nrows, ncols, legend=2.9, width=3.3, height=2.7, left=0.7, top=0.6):
    """nrows x ncols panels and a `legend`-inch column on the right. Sizes in inches, fixed (tight_layout would cost an
    extra draw per figure); `height` may be a list, one per row."""
    heights = height if isinstance(height, list) else [height] * nrows
    gap = 1.0  # between rows: an x label and the next row's title
    w, h = left + width * ncols + legend + 0.1, sum(heights) + gap * (nrows - 1) + top + 0.55
    fig = Figure(figsize=(w, h))
    fig.subplots_adjust(left=left / w, right=1 - (legend + 0.1) / w, bottom=0.55 / h, top=1 - top / h, wspace=0.38,
                        hspace=gap * nrows / sum(heights))
    return fig, fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=dict(height_ratios=heights))


def _label_room(labels):
    """Inches left of the axes for y tick labels of 7-point text."""
    return 0.6 + 0.055 * max(map(len, labels), default=0)


def _legend(ax, handles, labels, title=None):
    ax.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.04, 0.5), fontsize=7,
              title_fontsize=8, frameon=False)


def _finish(fig, title, path):
    fig.suptitle(title, y=1 - 0.12 / fig.get_figheight(), va="top")  # a fixed 0.12 inch from the top
    fig.savefig(path, dpi=110)
    return fig


def _method_curves(rows, logs, styles, names, keys, path, title, window, targets=False):
    """One row of panels per group (panel_groups), one panel per name; dashed: CTWA's covariance targets."""
    have = [r for r in rows if logs.get(r["label"])]
    if not have:
        raise ValueError("none of the run folders that summary.json names is here: run report.py beside the runs")
    groups = panel_groups(have)
    fig, axes = _grid(len(groups), len(names))
    for row_axes, (group, members) in zip(axes, groups):
        for ax, name, key in zip(row_axes, names, keys):
            for r in members:
                curve, st = group_curve(logs[r["label"]], key, window), styles[r["label"]]
                if curve is None:
                    continue
                steps, mean, std = curve
                ax.plot(steps, mean, **st, label=r["label"], markevery=0.2, markersize=4, linewidth=1.3)
                ax.fill_between(steps, mean - std, mean + std, color=st["color"], alpha=0.12, linewidth=0)
                if targets and r["ctwa"] and r["ctwa"].get("signal", "cov") == "cov":  # targets of this statistic
                    ax.axhline(r["ctwa"]["cov_targets"][names.index(name)], color=st["color"], linestyle=(0, (4, 3)),
                               linewidth=0.8)
            smoothed = "" if key.startswith("eval/") or window <= 1 else f", mean of {window} steps"
            ax.set(title=name, xlabel="step", ylabel=key + smoothed)
            ax.grid(alpha=0.3)
        _legend(row_axes[-1], [Line2D([], [], **styles[r["label"]]) for r in members],
                [r["label"] for r in members], group)
    return _finish(fig, title, path)


def plot_objectives(rows: list, logs: dict, styles: dict, path: str, window: int = 10):
    """Paper Fig. 1: objectives and response length over training, mean over runs with a ±1 std band."""
    names = rows[0]["objectives"] + ["response_length"]
    keys = curve_keys(names, [m for r in rows for m in logs.get(r["label"], [])])
    return _method_curves(rows, logs, styles, names, keys, path, "objectives over training (mean over runs, band "
                          "±1 std)", window)


def plot_covariance(rows: list, logs: dict, styles: dict, path: str, window: int = 10):
    """Paper Fig. 3: Cov(reward_k, clipped advantage weight) per objective; dashed = CTWA's targets."""
    objs = rows[0]["objectives"]
    return _method_curves(rows, logs, styles, objs, [f"cov/{o}" for o in objs], path,
                          "reward / clipped-advantage-weight covariance (dashed: CTWA targets)", window, targets=True)


def plot_controller(rows: list, logs: dict, path: str, window: int = 10):
    """Paper Fig. 2, the controller at work: per CTWA row its weights; the statistic it steers (cov, corr or the
    gradient cosine law/cos; faint: each step, solid: its EMA ema/<o>, which CTWA compares) against its targets
    (dashed); and the objectives. One colour per objective."""
    ctwa = [r for r in rows if r["method"] == "ctwa" and logs.get(r["label"])]
    if not ctwa:
        raise ValueError("no CTWA row whose run folders are here")
    objs = rows[0]["objectives"]
    fig, axes = _grid(len(ctwa), 3, legend=1.6, top=0.9)  # room for the two-line titles
    for row_axes, r in zip(axes, ctwa):
        stat, runs = {"grad": "law/cos", "corr": "corr"}.get(r["ctwa"].get("signal"), "cov"), logs[r["label"]]
        panels = [([f"weight/{o}" for o in objs], "weight"), ([f"ema/{o}" for o in objs], f"{stat} (EMA)"),
                  (curve_keys(objs, runs), "")]
        for ax, (keys, what) in zip(row_axes, panels):
            for k, key in enumerate(keys):
                color = OBJECTIVE_COLORS[k]
                if key.startswith("ema/"):
                    raw = group_curve(runs, f"{stat}/{objs[k]}", 1)
                    if raw is not None:
                        ax.plot(raw[0], raw[1], color=color, linewidth=0.8, alpha=0.35)
                    ax.axhline(r["ctwa"]["cov_targets"][k], color=color, linestyle="--", linewidth=0.9)
                curve = group_curve(runs, key, window if key.startswith("reward/") else 1)
                if curve is not None:
                    ax.plot(curve[0], curve[1], color=color, linewidth=1.4)
            smoothed = f", mean of {window} steps" if keys[0].startswith("reward/") and window > 1 else ""
            ax.set(xlabel="step", ylabel=(what or keys[0].split("/")[0] + "/<objective>") + smoothed)
            ax.grid(alpha=0.3)
        for ax, title in zip(row_axes, ("weights", f"{r['label']}\nstatistic vs targets (dashed)", "objectives")):
            ax.set_title(title, fontsize=9)
        _legend(row_axes[-1], [Line2D([], [], color=c) for c, _ in zip(OBJECTIVE_COLORS, objs)]
                + [Line2D([], [], color="gray", linestyle="--")], objs + ["target"])
    return _finish(fig, "CTWA's controller: a weight grows while its objective's statistic lags the target", path)


def plot_sensitivity(rows: list, path: str):
    """Paper Fig. 4: final objectives (95% interval over runs) per CTWA setting of the sweep, a colour per λ."""
    rows = sorted((r for r in rows if r["method"] == "ctwa"),
                  key=lambda r: (r["ctwa"]["lambda_lr"], tuple(r["ctwa"]["cov_targets"])))
    if not rows:
        raise ValueError("no CTWA runs among the sweep runs given")
    names, lambdas = rows[0]["objectives"] + ["response_length"], sorted({r["ctwa"]["lambda_lr"] for r in rows})
    settings = [r["label"].removeprefix("ctwa (").removesuffix(")") for r in rows]
    fig, axes = _grid(1, len(names), legend=1.0, width=2.6, height=0.3 * len(rows) + 1.0, left=_label_room(settings))
    y, colors = np.arange(len(rows)), [LAMBDA_GREYS[lambdas.index(r["ctwa"]["lambda_lr"])] for r in rows]
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        f = [r["final"][name] for r in rows]
        err = [[s["mean"] - s["low"] for s in f], [s["high"] - s["mean"] for s in f]]
        ax.barh(y, [s["mean"] for s in f], xerr=err, capsize=2, color=colors)
        ax.set_yticks(y, settings if i == 0 else [""] * len(rows), fontsize=7)
        ax.invert_yaxis()  # the settings read top-down, smallest λ first
        ax.set(title=name, xlabel=f"final {name}", ylabel="CTWA setting" if i == 0 else "")
        ax.grid(axis="x", alpha=0.3)
    _legend(axes[0][-1], [Line2D([], [], color=c, linewidth=6) for c, _ in zip(LAMBDA_GREYS, lambdas)],
            [f"λ {v:g}" for v in lambdas])
    return _finish(fig, "CTWA covariance-target sweep: final values, 95% interval over runs", path)


def plot_pareto(rows: list, styles: dict, front_hypervolume: float, path: str):
    """Final per-objective means per row on every pair of objectives; filled = on the Pareto front (all K)."""
    objs = rows[0]["objectives"]
    pairs = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs))]
    fig, axes = _grid(1, len(pairs), legend=3.2, height=3.4)
    for ax, (i, j) in zip(axes[0], pairs):
        for r in rows:
            st = styles[r["label"]]
            ax.scatter(r["final"][objs[i]]["mean"], r["final"][objs[j]]["mean"], s=45, marker=st["marker"],
                       edgecolors=st["color"], facecolors=st["color"] if r["pareto"] else "none")
        ax.set(xlabel=f"{objs[i]} (reward)", ylabel=f"{objs[j]} (reward)")
        ax.grid(alpha=0.3)
    _legend(axes[0][-1], [Line2D([], [], color=styles[r["label"]]["color"], marker=styles[r["label"]]["marker"],
                                 linestyle="none") for r in rows],
            [f"{r['label']}  HV {r['hypervolume']['mean']:.3f}" for r in rows])
    return _finish(fig, f"final Pareto front (filled = non-dominated), HV of the front {front_hypervolume:.3f}", path)


def plot_law(rows: list, logs: dict, path: str):
    """The covariance law on real runs: per row and objective the sign agreement and Spearman ρ of (a) cov/<o> and
    (b) law/grad/<o> with (c) law/probe/<o> (95% intervals over runs); below, for the first such row with its runs
    here, (a) and (b) against (c) step by step, each series divided by its RMS so objectives share the axes."""
    tested = [r for r in rows if r.get("law")]
    if not tested:
        raise ValueError("no run tested the covariance law (train.py --law-interval > 0)")
    objs, shown = rows[0]["objectives"], next((r for r in tested if logs.get(r["label"])), None)
    bars = max(2.0, 0.4 * len(tested) + 0.6)
    heights = [bars, bars] + ([2.8] if shown else [])
    fig, axes = _grid(len(heights), len(objs), legend=1.4, height=heights, left=_label_room(r["label"] for r in tested))
    y, parts = np.arange(len(tested)), (("cov", "#999999", "(a) cov"), ("grad", "#542788", "(b) <g, step>"))
    for row_axes, stat in zip(axes, ("sign", "rank")):
        for i, (ax, o) in enumerate(zip(row_axes, objs)):
            for shift, (part, color, _) in zip((-0.2, 0.2), parts):
                s = [r["law"].get(o, {}).get(f"{stat}_{part}", dict(mean=math.nan, low=math.nan, high=math.nan))
                     for r in tested]
                ax.barh(y + shift, [v["mean"] for v in s], height=0.4, color=color, capsize=2,
                        xerr=[[v["mean"] - v["low"] for v in s], [v["high"] - v["mean"] for v in s]])
            ax.axvline(0.5 if stat == "sign" else 0.0, color="k", linewidth=0.8, linestyle=":")  # chance
            ax.set_yticks(y, [r["label"] if i == 0 else "" for r in tested], fontsize=7)
            ax.set(title=o, ylabel="method" if i == 0 else "", xlim=(0, 1) if stat == "sign" else (-1, 1),
                   xlabel="sign agreement with (c)" if stat == "sign" else "Spearman ρ with (c)")
        _legend(row_axes[-1], [Line2D([], [], color=c, linewidth=6) for _, c, _ in parts], [n for *_, n in parts])
    for ax, (part, _, name) in zip(axes[2] if shown else [], parts):
        key = "law/grad" if part == "grad" else part
        for k, o in enumerate(objs):
            pairs = []
            for m in logs[shown["label"]]:
                x, c = (dict(zip(*series(m, f"{prefix}/{o}"))) for prefix in (key, "law/probe"))
                pairs += [(x[s], c[s]) for s in x if s in c]
            if pairs:
                a, c = (v / (np.sqrt(np.mean(v ** 2)) or 1) for v in np.array(pairs).T)
                ax.scatter(a, c, s=10, color=OBJECTIVE_COLORS[k], alpha=0.7)
        ax.axhline(0, color="k", linewidth=0.6)
        ax.axvline(0, color="k", linewidth=0.6)
        ax.set(xlabel=f"{name} / RMS", ylabel="(c) probe change / RMS")
        ax.set_title(f"{name} vs (c), step by step:\n{shown['label']}", fontsize=8)
    if shown:
        for ax in axes[2][2:]:
            ax.remove()
        dots = [Line2D([], [], color=c, marker="o", linestyle="none") for c, _ in zip(OBJECTIVE_COLORS, objs)]
        _legend(axes[2][1], dots, objs)
    return _finish(fig, "covariance law: do (a) Cov(r_k, w) and (b) <g_k, step> predict the probe change (c)?", path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", default="results/summary.json", help="report.py's summary.json (names the runs)")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: the folder of --summary)")
    args = parser.parse_args()
    if not os.path.isfile(args.summary):
        raise SystemExit(f"plots.py: no {args.summary}: run report.py --runs ... --out first")
    with open(args.summary) as f:
        summary = json.load(f)
    out = args.out or os.path.dirname(os.path.abspath(args.summary))
    os.makedirs(out, exist_ok=True)
    rows, sweep, window = summary["methods"], summary.get("sweep", []), summary["window"]
    styles, (logs, missing), names = line_styles(rows + sweep), read_logs(rows), {r["label"] for r in rows}
    if missing:  # a fresh clone has results/summary.json but not the runs: the curves need them
        print(f"skipped {len(missing)} run folders that are not here ({', '.join(missing[:3])}"
              f"{', ...' if len(missing) > 3 else ''}): curves drawn from the others")
    figures = dict(fig1_objectives=lambda p: plot_objectives(rows, logs, styles, p, window),
                   fig2_controller=lambda p: plot_controller(rows, logs, p, window),
                   fig3_covariance=lambda p: plot_covariance(rows, logs, styles, p, window),
                   fig4_sensitivity=lambda p: plot_sensitivity(sweep, p),
                   fig5_pareto=lambda p: plot_pareto(rows, styles, summary["front_hypervolume"], p),
                   fig6_law=lambda p: plot_law(rows + [r for r in sweep if r["label"] not in names], logs, p))
    for name, draw in figures.items():
        try:
            draw(os.path.join(out, name + ".png"))
            print(f"wrote {os.path.join(out, name + '.png')}")
        except ValueError as e:  # e.g. no CTWA run, or no run folder here: skip that figure and say why
            print(f"skipped {name}: {e}")
