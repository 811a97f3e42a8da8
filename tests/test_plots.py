"""plots.py: every figure renders, with labelled axes, from tiny fabricated run folders and eval.py's summary.json.

    python -m pytest -q tests/test_plots.py
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import eval as ev
import plots

OBJS = ["accuracy", "conciseness", "clarity"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ["fig1_objectives", "fig2_weights", "fig3_covariance", "fig4_sensitivity", "fig5_pareto"]


def _run(root, name, method, seed, targets=None, eval_every=4):
    """A 12-step train.py-like run folder: rewards, covariances, CTWA weights, a greedy eval every `eval_every`."""
    path = os.path.join(root, name)
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(dict(method=method, seed=seed, objectives=OBJS, ctwa_cov_targets=targets or [0.15, 0.08, 0.08]), f)
    rng = np.random.default_rng(seed)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step in range(13):
            row = {"step": step}
            if step:
                row.update({"score": 0.5 + 0.01 * step, "response_length": 20 - 0.2 * step})
                row.update({f"reward/{o}": 0.4 + 0.02 * step * i + 0.01 * rng.random() for i, o in enumerate(OBJS)})
                row.update({f"cov/{o}": 0.1 * i - 0.005 * step for i, o in enumerate(OBJS)})
                if method == "ctwa":
                    row.update({f"weight/{o}": 1 / 3 + 0.01 * step * (i - 1) for i, o in enumerate(OBJS)})
            if eval_every and step % eval_every == 0:
                row.update({f"eval/{o}": 0.5 + 0.01 * step * i for i, o in enumerate(OBJS)})
                row["eval/response_length"] = 20.0 - 0.1 * step
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture()
def summary(tmp_path, capsys):
    """Two methods × 2 seeds and a 2-setting CTWA sweep, summarised by eval.py into <tmp>/results/summary.json."""
    root = str(tmp_path)
    runs = [_run(root, f"{m}-s{s}", m, s, targets=[0.1, 0.1, 0.1] if m == "ctwa" else None)
            for m in ("linear", "ctwa") for s in (0, 1)]
    sweep = [_run(root, f"sweep-{i}", "ctwa", 0, targets=t) for i, t in enumerate([[0.1, 0.1, 0.1], [-0.1, 0.1, 0.1]])]
    ev.report(runs, os.path.join(root, "results"), sweep_dirs=sweep, window=3)
    capsys.readouterr()  # the table eval.py printed
    return os.path.join(root, "results", "summary.json")


def _plots(*args):
    res = subprocess.run([sys.executable, "plots.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_cli_renders_every_figure(summary):
    """plots.py --summary writes the five PNGs beside summary.json."""
    out = _plots("--summary", summary)
    folder = os.path.dirname(summary)
    for name in FIGURES:
        path = os.path.join(folder, name + ".png")
        assert f"wrote {path}" in out and os.path.getsize(path) > 1000 and open(path, "rb").read(4) == b"\x89PNG"


def test_cli_without_the_runs_draws_what_summary_json_holds(summary, tmp_path):
    """A fresh clone has results/summary.json but no runs: figures 4 and 5 render, the curves are skipped."""
    for name in os.listdir(tmp_path):
        if name != "results":
            shutil.rmtree(tmp_path / name)
    out = _plots("--summary", summary, "--out", str(tmp_path / "figs"))
    assert "skipped the curves" in out and "metrics.jsonl not found" in out
    assert sorted(os.listdir(tmp_path / "figs")) == ["fig4_sensitivity.png", "fig5_pareto.png"]


def test_figures_label_every_axis(summary, tmp_path):
    """Every figure labels every axis; fig1 shows eval curves when every run logged them; fig2 needs a CTWA run."""
    with open(summary) as f:
        s = json.load(f)
    rows = s["methods"]
    logs = {r["label"]: [plots.read_metrics(run["dir"]) for run in r["runs"]] for r in rows}
    figs = [plots.plot_objectives(rows, logs, str(tmp_path / "a.png"), s["window"]),
            plots.plot_weights(rows, logs, str(tmp_path / "b.png")),
            plots.plot_covariance(rows, logs, str(tmp_path / "c.png"), s["window"]),
            plots.plot_sensitivity(s["sweep"], str(tmp_path / "d.png")),
            plots.plot_pareto(rows, s["front_hypervolume"], str(tmp_path / "e.png"))]
    assert all(f.axes and all(ax.get_xlabel() and ax.get_ylabel() for ax in f.axes) for f in figs)
    assert figs[0].axes[0].get_ylabel() == "eval/accuracy"  # greedy test curve, unsmoothed
    assert figs[2].axes[0].get_ylabel() == "cov/accuracy, mean of 3 steps"
    with pytest.raises(ValueError, match="CTWA"):
        plots.plot_weights(rows[:1], logs, str(tmp_path / "f.png"))


def test_objectives_fall_back_to_training_curves(tmp_path):
    """If one run logged no eval, every panel shows the smoothed training mean, never a mix of the two."""
    runs = [plots.read_metrics(_run(str(tmp_path), "a", "linear", 0)),
            plots.read_metrics(_run(str(tmp_path), "b", "linear", 1, eval_every=0))]
    rows = [dict(label="linear", objectives=OBJS)]
    fig = plots.plot_objectives(rows, {"linear": runs}, str(tmp_path / "a.png"), window=3)
    assert [ax.get_ylabel() for ax in fig.axes] == [f"reward/{o}, mean of 3 steps" for o in OBJS] + \
        ["response_length, mean of 3 steps"]
    steps, values = plots.series(runs[0], "eval/conciseness")
    assert steps[0] == 4 and len(values) == 3  # step 0's eval/conciseness is no measurement (no running mean yet)
