"""plots.py: every figure renders from tiny fabricated run folders and report.py's summary.json, with labelled axes,
at most 6 lines a panel, one style per method in every figure and legends off the data; without the runs it draws
what summary.json holds.

    python -m pytest -q tests/test_plots.py
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import plots
import report as rp

OBJS = ["accuracy", "conciseness", "clarity"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ["fig1_objectives", "fig2_controller", "fig3_covariance", "fig4_sensitivity", "fig5_pareto", "fig6_law"]
# (method, logs a score, logs coef/): two per level, so fig1 has a panel row per level and one for CTWA
METHODS = [("linear", True, False), ("tchebycheff", True, False), ("lagrangian", False, False),
           ("pama", False, False), ("mgda", False, True), ("pcgrad", False, True)]


def _run(root, name, method, seed, flags=(), eval_every=4, **config):
    """A 12-step train.py-like run folder: rewards, covariances, the law's keys, CTWA's weights and EMA, a greedy eval
    every `eval_every` steps (0 = none)."""
    path = os.path.join(root, name)
    os.makedirs(path)
    score, coef = next(((s, c) for m, s, c in METHODS if m == method), (True, False))
    config = {"method": method, "seed": seed, "steps": 12, "objectives": OBJS, "ctwa_cov_targets": [0.3, 0.08, 0.08],
              "ctwa_lambda_lr": 0.5, "ctwa_signal": "cov", "argv": ["--method", method, *flags], **config}
    rng = np.random.default_rng(seed)
    rows = [{"step": s} for s in range(13)]
    for step, row in enumerate(rows[1:], 1):
        row.update({"response_length": 20 - 0.2 * step, **({"score": 0.5 + 0.01 * step} if score else {})})
        for i, o in enumerate(OBJS):
            c = 0.01 * rng.standard_normal()
            row.update({f"reward/{o}": 0.4 + 0.02 * step * i + 0.01 * rng.random(), f"cov/{o}": 0.1 * i - 0.005 * step,
                        f"law/cos/{o}": 0.2 - 0.01 * step, f"law/grad/{o}": c + 0.005 * rng.standard_normal(),
                        f"law/probe/{o}": c})
            if coef:
                row[f"coef/{o}"] = 1 / 3
            if method == "ctwa":
                row.update({f"weight/{o}": 1 / 3 + 0.01 * step * (i - 1), f"ema/{o}": 0.1 * i - 0.004 * step})
    for row in rows[::eval_every] if eval_every else []:
        row.update({f"eval/{o}": 0.5 + 0.01 * row["step"] * i for i, o in enumerate(OBJS)},
                   **{"eval/response_length": 20.0 - 0.1 * row["step"]})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def summary(tmp_path, capsys):
    """Six methods (two per level) × 2 seeds, two CTWA rows, and a sweep at two λ, summarised by report.py into
    <tmp>/results/summary.json."""
    root = str(tmp_path)
    runs = [_run(root, f"{m}-s{s}", m, s) for m, _, _ in METHODS for s in (0, 1)]
    runs += [_run(root, f"ctwa-s{s}", "ctwa", s) for s in (0, 1)]
    runs += [_run(root, "ctwa-grad", "ctwa", 0, ["--ctwa-signal", "grad"], ctwa_signal="grad")]
    sweep = [_run(root, f"sweep-{i}", "ctwa", 0, ["--ctwa-cov-targets", *map(str, t), "--ctwa-lambda-lr", str(lam)],
                  ctwa_cov_targets=t, ctwa_lambda_lr=lam)
             for i, (t, lam) in enumerate([([0.15, 0.08, 0.08], 0.05), ([0.3, 0.08, 0.08], 0.5), ([-0.1] * 3, 0.5)])]
    rp.report(runs, os.path.join(root, "results"), sweep_dirs=sweep, window=3)
    capsys.readouterr()  # the tables report.py printed
    return os.path.join(root, "results", "summary.json")


def _plots(*args):
    res = subprocess.run([sys.executable, "plots.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _figures(summary, folder):
    """Every figure, drawn in-process like the CLI draws it."""
    with open(summary) as f:
        s = json.load(f)
    rows, sweep = s["methods"], s["sweep"]
    styles, (logs, missing) = plots.line_styles(rows + sweep), plots.read_logs(rows)
    assert missing == []
    figs = [plots.plot_objectives(rows, logs, styles, str(folder / "1.png"), s["window"]),
            plots.plot_controller(rows, logs, str(folder / "2.png"), s["window"]),
            plots.plot_covariance(rows, logs, styles, str(folder / "3.png"), s["window"]),
            plots.plot_sensitivity(sweep, str(folder / "4.png")),
            plots.plot_pareto(rows, styles, s["front_hypervolume"], str(folder / "5.png")),
            plots.plot_law(rows, logs, str(folder / "6.png"))]
    return s, styles, figs


def test_cli_renders_every_figure(summary):
    """plots.py --summary writes the six PNGs beside summary.json."""
    out = _plots("--summary", summary)
    folder = os.path.dirname(summary)
    for name in FIGURES:
        path = os.path.join(folder, name + ".png")
        assert f"wrote {path}" in out and os.path.getsize(path) > 1000 and open(path, "rb").read(4) == b"\x89PNG"


def test_cli_without_the_runs_draws_what_summary_json_holds(summary, tmp_path):
    """A fresh clone has results/summary.json but no runs: the sweep, the front and the law's bars render; the
    curves are skipped, saying why."""
    for name in os.listdir(tmp_path):
        if name != "results":
            shutil.rmtree(tmp_path / name)
    out = _plots("--summary", summary, "--out", str(tmp_path / "figs"))
    assert "skipped 15 run folders that are not here" in out and "skipped fig1_objectives: none of the run" in out
    assert sorted(os.listdir(tmp_path / "figs")) == ["fig4_sensitivity.png", "fig5_pareto.png", "fig6_law.png"]


def test_figures_are_readable(summary, tmp_path):
    """Labelled axes; at most 6 method lines a panel; a method's colour and line style the same in every figure and
    different from every other method's; legends outside every axes."""
    s, styles, figs = _figures(summary, tmp_path)
    labels = [r["label"] for r in s["methods"] + s["sweep"]]
    assert len({(st["color"], st["linestyle"]) for st in styles.values()}) == len(styles) == len(set(labels))
    for fig in figs:
        FigureCanvasAgg(fig).draw()
        boxes = [ax.get_window_extent() for ax in fig.axes]
        for ax in fig.axes:
            # a panel whose y axis repeats its left neighbour's (the same methods or settings) leaves it unnamed
            assert ax.get_xlabel() and (ax.get_ylabel() or not any(t.get_text() for t in ax.get_yticklabels()))
            legend = ax.get_legend()
            assert legend is None or not any(legend.get_window_extent().overlaps(b) for b in boxes)
    for fig in figs[0], figs[2]:  # method curves: every line is a method in its own style
        for ax in fig.axes:
            lines = [line for line in ax.get_lines() if line.get_label() in styles]
            assert 1 <= len(lines) <= plots.PANEL_LINES
            assert all(line.get_color() == styles[line.get_label()]["color"] and
                       line.get_linestyle() == styles[line.get_label()]["linestyle"] for line in lines)
    assert len(figs[0].axes) == 4 * 4  # reward, advantage, gradient, CTWA x 3 objectives + length
    assert figs[0].axes[0].get_ylabel() == "eval/accuracy"  # greedy test curve, unsmoothed
    assert figs[2].axes[0].get_ylabel() == "cov/accuracy, mean of 3 steps"
    assert [ax.get_ylabel() for ax in figs[1].axes[1::3]] == ["cov (EMA)", "law/cos (EMA)"]  # two CTWA rows
    ticks = [t.get_text() for t in figs[3].axes[0].get_yticklabels()]
    assert ticks == ["targets 0.15/0.08/0.08, λ 0.05", "targets -0.1/-0.1/-0.1, λ 0.5", "targets 0.3/0.08/0.08, λ 0.5"]
    assert len(figs[5].axes) == 3 + 3 + 2  # sign agreement, rank correlation, and the scatter of one method


def test_panel_groups_hold_six_lines_with_linear_in_each():
    """Fifteen methods: grouped by level (CTWA apart), split to at most 6 lines, linear the reference in each."""
    levels = ["reward"] * 5 + ["advantage"] * 2 + ["gradient"] * 7
    rows = [dict(label=f"m{i}" if i else "linear", method="ctwa" if i == 13 else "x", level=lv)
            for i, lv in enumerate(levels + ["reward"])]
    groups = plots.panel_groups(rows)
    assert all(len(g) <= 6 and g[0]["label"] == "linear" for _, g in groups)
    assert [t for t, _ in groups] == ["reward level", "advantage level", "gradient level (1/2)",
                                      "gradient level (2/2)", "CTWA"]
    assert sorted({r["label"] for _, g in groups for r in g}) == sorted(r["label"] for r in rows)


def test_objectives_fall_back_to_training_curves(tmp_path):
    """If one run logged no eval, every panel shows the smoothed training mean, never a mix of the two."""
    runs = [plots.read_metrics(_run(str(tmp_path), "a", "linear", 0)),
            plots.read_metrics(_run(str(tmp_path), "b", "linear", 1, eval_every=0))]
    rows = [dict(label="linear", method="linear", level="reward", objectives=OBJS, ctwa=None)]
    fig = plots.plot_objectives(rows, {"linear": runs}, plots.line_styles(rows), str(tmp_path / "a.png"), window=3)
    assert [ax.get_ylabel() for ax in fig.axes] == [f"reward/{o}, mean of 3 steps" for o in OBJS] + \
        ["response_length, mean of 3 steps"]
    steps, values = plots.series(runs[0], "eval/conciseness")
    assert steps[0] == 4 and len(values) == 3  # step 0's eval/conciseness is no measurement (no running mean yet)


def test_read_metrics_drops_a_half_written_line(tmp_path):
    """A run still writing: its unfinished last line is left out, the rest is read."""
    path = _run(str(tmp_path), "a", "linear", 0)
    with open(os.path.join(path, "metrics.jsonl"), "a") as f:
        f.write('{"step": 13, "rew')
    assert [m["step"] for m in plots.read_metrics(path)] == list(range(13))
