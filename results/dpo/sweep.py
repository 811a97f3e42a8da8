"""Table and figure of the DPO weight sweep (results/dpo/run.sh): for each method and preference weight, the greedy
test-split scores of the final checkpoints (eval.py's JSON) as mean ± std over seeds, the share of the update the
method actually gave accuracy, and each method's front (hypervolume over its weights, per seed).

    python results/dpo/sweep.py --eval results/dpo/eval.json --out results/dpo    # summary.md, summary.json, sweep.png
"""
import argparse
import json
import os

import numpy as np
from matplotlib.figure import Figure  # a bare Figure, no pyplot: no display, no global state
from matplotlib.lines import Line2D

KEYS = ("accuracy", "conciseness", "clarity", "response_length")  # eval.py's scores used here
STYLE = {"linear": dict(color="C0", linestyle="-", marker="o"), "cagrad": dict(color="C1", linestyle="--", marker="s"),
         "raco": dict(color="C2", linestyle="-.", marker="^")}


def hypervolume_2d(points):
    """Area dominated by 2-D points (maximisation) above the origin: a staircase swept by decreasing x."""
    area, top = 0.0, 0.0
    for x, y in sorted(points, reverse=True):
        if y > top:
            area, top = area + x * (y - top), y
    return area


def read_run(result):
    """One eval.py result joined with its run's config and the mean share of accuracy in the coefficients."""
    run = os.path.dirname(result["checkpoint"])
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        coef = np.array([[m["coef/accuracy"], m["coef/conciseness"]] for m in map(json.loads, f)])  # (steps, 2)
    return dict(method=config["method"], w=round(config["weights"][0], 3), seed=config["seed"],
                share=float((coef[:, 0] / coef.sum(1)).mean()), **{k: result[k] for k in KEYS})



def mean_std(values):
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(runs):
    """Rows per (method, weight): mean ± std over seeds of KEYS and the accuracy share; per method: hypervolume of
    each seed's (accuracy, conciseness) points over the weights."""
    rows, fronts = [], {}
    for method in STYLE:
        mine = [r for r in runs if r["method"] == method]
        if not mine:  # a partial sweep: a method with no finished run has no row and no front
            continue
        for w in sorted({r["w"] for r in mine}):
            group = [r for r in mine if r["w"] == w]
            rows.append(dict(method=method, w=w, seeds=sorted(r["seed"] for r in group),
                             **{k: mean_std([r[k] for r in group]) for k in (*KEYS, "share")}))
        seeds = sorted({r["seed"] for r in mine})
        fronts[method] = mean_std([hypervolume_2d([(r["accuracy"], r["conciseness"]) for r in mine if r["seed"] == s])
                                   for s in seeds])
    return rows, fronts


def table(rows, fronts, base):
    def cell(m):
        return f"{m[0]:.3f} ± {m[1]:.3f}"

    head = ["method", "weights (acc, conc)", "seeds", "accuracy", "conciseness", "clarity", "length",
            "accuracy share of c"]
    lines = [["base model", "-", "-", *(f"{base[k]:.3f}" for k in KEYS[:3]), f"{base['response_length']:.1f}", "-"]]
    lines += [[r["method"], f"({r['w']:g}, {1 - r['w']:g})", str(len(r["seeds"])), *(cell(r[k]) for k in KEYS[:3]),
               f"{r['response_length'][0]:.1f} ± {r['response_length'][1]:.1f}", cell(r["share"])] for r in rows]
    text = "\n".join("| " + " | ".join(c) + " |" for c in [head, ["---"] * len(head), *lines])
    return text + "\n\nHypervolume of each method's front over the weights, (accuracy, conciseness) above (0, 0), " \
        "mean ± std over seeds: " + ", ".join(f"{m} {cell(hv)}" for m, hv in fronts.items()) + "\n"


def figure(rows, base, path):
    """(a) the fronts, (b) accuracy against the weight asked for it, (c) the accuracy share the method used."""
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    front, acc, share = fig.subplots(1, 3)
    for method, style in STYLE.items():
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        w = [r["w"] for r in mine]
        xs, ys = (np.array([r[k] for r in mine]) for k in ("accuracy", "conciseness"))  # (weights, 2): mean, std
        front.errorbar(xs[:, 0], ys[:, 0], xerr=xs[:, 1], yerr=ys[:, 1], capsize=2, **style)
        for r in mine[:1] + mine[-1:]:  # the two ends of the sweep
            front.annotate(f"w={r['w']:g}", (r["accuracy"][0], r["conciseness"][0]), fontsize=7, color=style["color"],
                           textcoords="offset points", xytext=(4, 4))
        acc.errorbar(w, xs[:, 0], yerr=xs[:, 1], capsize=2, **style)
        share.errorbar(w, [r["share"][0] for r in mine], yerr=[r["share"][1] for r in mine], capsize=2, **style)
    front.plot(base["accuracy"], base["conciseness"], "k*", markersize=12)
    acc.axhline(base["accuracy"], color="k", linestyle=":")
    share.plot([0, 1], [0, 1], color="0.6", linestyle=":")
    for ax, title, xlabel, ylabel in ((front, "(a) front: final greedy scores", "accuracy", "conciseness"),
                                      (acc, "(b) accuracy against its weight", "weight on accuracy", "accuracy"),
                                      (share, "(c) accuracy's share of the coefficients", "weight on accuracy",
                                       "c_acc / (c_acc + c_conc), mean over steps")):
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], label=m, **s) for m, s in STYLE.items()]
    handles += [Line2D([], [], color="k", marker="*", linestyle=":", label="base model (arith-s0)"),
                Line2D([], [], color="0.6", linestyle=":", label="share = weight")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", required=True, help="eval.py --out JSON: the base model first, then the runs")
    parser.add_argument("--out", required=True, help="folder for summary.md, summary.json and sweep.png")
    args = parser.parse_args()
    with open(args.eval) as f:
        base, *results = json.load(f)["results"]
    rows, fronts = summarize([read_run(r) for r in results])
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table(rows, fronts, base))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(dict(base={k: base[k] for k in KEYS}, rows=rows, hypervolume=fronts), f, indent=1)
    figure(rows, base, os.path.join(args.out, "sweep.png"))
    print(table(rows, fronts, base))
