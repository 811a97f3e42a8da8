"""report.py: exact hypervolume, Pareto front, the interference detector, the bootstrap intervals, the covariance-law
test, rows by full configuration and the summary from fabricated run folders (skipping unreadable ones), and the
command line.  Run: python -m pytest -q tests/test_report.py
"""
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import arith
import report as rp

OBJS = ["accuracy", "conciseness", "clarity"]


def _log(steps=80, drop_at=None, drop=0.3, score_slope=0.004, seed=0, eval_every=0, targets=None, score=True):
    """Synthetic metrics.jsonl rows: flat objectives at 0.5 (+ noise), accuracy falling linearly after drop_at."""
    rng = np.random.default_rng(seed)
    # step 0 = eval of the base model; conciseness is 1 there (no running mean yet), as train.py logs it
    rows = [] if not eval_every else [{"step": 0, **{f"eval/{o}": 0.5 for o in OBJS}, "eval/conciseness": 1.0,
                                       "eval/response_length": 30.0}]
    for step in range(1, steps + 1):
        acc = 0.5 - (drop * (step - drop_at) / (steps - drop_at) if drop_at and step > drop_at else 0.0)
        vals = dict(accuracy=acc, conciseness=0.5 + 0.002 * step, clarity=0.5)
        row = {"step": step, "score": 0.5 + score_slope * step + 0.005 * rng.standard_normal(),
               "response_length": 30.0 - 0.05 * step, "kl": 0.0, "loss": 0.1}
        for i, o in enumerate(OBJS):
            row[f"reward/{o}"] = vals[o] + 0.01 * rng.standard_normal()
            row[f"cov/{o}"] = 0.05 * (i + 1) + 0.01 * rng.standard_normal()
            if targets:
                row[f"weight/{o}"] = 1 / 3 + 0.001 * step * (1 - i)
        if not score:  # advantage/gradient-level methods log no score
            del row["score"]
        if eval_every and step % eval_every == 0:
            row.update({f"eval/{o}": vals[o] for o in OBJS}, **{"eval/response_length": 30.0 - 0.05 * step})
        rows.append(row)
    return rows


def _write_run(root, name, method="linear", seed=0, argv=(), model=None, log=None, **config):
    """A train.py-like run folder: config.json (every resolved flag and the command line, argv=None: a log from before
    train.py recorded it) and metrics.jsonl (`log` rows, default _log(seed=seed))."""
    path = os.path.join(root, name)
    os.makedirs(path)
    log = _log(seed=seed) if log is None else log
    # train.py writes every flag, so non-CTWA runs carry CTWA's settings too
    config = {"method": method, "task": "arith", "seed": seed, "model": model, "out_dir": path, "lr": 1e-4,
              "steps": max(row["step"] for row in log), "eval_interval": 10, "ctwa_cov_targets": [0.3, 0.08, 0.08],
              "ctwa_lambda_lr": 0.5, "ctwa_signal": "cov", "objectives": OBJS, "world_size": 1,
              "model_path": model if model and os.sep in model else f"base_models/{model or 'arith-s0'}",
              "argv": None if argv is None else [*argv, "--seed", str(seed), "--out-dir", path] +
              (["--model", model] if model else []), **config}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in log)
    return path


def _hv_inclusion_exclusion(points):
    """Independent exact HV (ref 0): Σ over non-empty subsets of (-1)^(|S|+1) × volume of their intersection box."""
    total = 0.0
    for n in range(1, len(points) + 1):
        for subset in itertools.combinations(points, n):
            total += (-1) ** (n + 1) * np.prod(np.min(np.array(subset), axis=0))
    return total


def test_hypervolume_hand_cases():
    """Single box, the dynamic-weighting ΔHV oracles (spec scalarizers §6.1) and a symmetric 3-D union."""
    assert rp.hypervolume([[0.5, 0.4, 0.2]]) == pytest.approx(0.04)
    d1 = rp.hypervolume([(0.5, 0.5), (0.6, 0.55)], ref=(0.5, 0.5)) - rp.hypervolume([(0.5, 0.5)], ref=(0.5, 0.5))
    assert d1 == pytest.approx(0.0050, abs=1e-9)
    buf = [(0.5, 0.5), (0.7, 0.55)]
    assert rp.hypervolume(buf + [(0.6, 0.6)], buf[0]) - rp.hypervolume(buf, buf[0]) == pytest.approx(0.0050)
    buf = [(0.5, 0.5), (0.7, 0.6)]
    assert rp.hypervolume(buf + [(0.6, 0.55)], buf[0]) - rp.hypervolume(buf, buf[0]) == pytest.approx(0.0, abs=1e-12)
    buf = [(0.2, 0.2), (0.8, 0.9)]
    assert rp.hypervolume(buf + [(0.9, 0.95)], buf[0]) - rp.hypervolume(buf, buf[0]) == pytest.approx(0.1050)
    # three boxes of 0.25 pairwise overlapping in the 0.5-cube: 3·0.25 − 3·0.125 + 0.125
    assert rp.hypervolume([(1, 0.5, 0.5), (0.5, 1, 0.5), (0.5, 0.5, 1)]) == pytest.approx(0.5)
    assert rp.hypervolume([]) == 0.0 and rp.hypervolume([(0.0, 0.7, 0.7)]) == 0.0  # on the reference plane
    with pytest.raises(ValueError, match="coordinates"):
        rp.hypervolume([(0.5, 0.5)], ref=(0, 0, 0))


def test_hypervolume_matches_inclusion_exclusion():
    """Random K=3 point sets (with dominated points and ties): slicing equals inclusion–exclusion."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 4, 6):
        pts = np.round(rng.uniform(0, 1, (n, 3)), 1)  # rounding makes ties on every axis
        assert rp.hypervolume(pts) == pytest.approx(_hv_inclusion_exclusion(pts), abs=1e-12)


def test_pareto_mask():
    """Dominated points are dropped; equal points both stay."""
    pts = [(0.5, 0.5, 0.5), (0.6, 0.5, 0.5), (0.1, 0.9, 0.1), (0.1, 0.9, 0.1), (0.0, 0.8, 0.0)]
    assert rp.pareto_mask(pts) == [False, True, True, True, False]


def test_detector_flags_planted_drop():
    """Accuracy falls 0.3 from step 40 while the score rises: flagged near step 55, the other objectives quiet."""
    found = rp.detect_interference(_log(drop_at=40), OBJS, threshold=0.05, window=10)
    assert [d["objective"] for d in found] == ["accuracy"]
    assert 48 <= found[0]["step"] <= 62 and found[0]["curve"] == "reward/accuracy"
    assert found[0]["start"] - found[0]["value"] > 0.05 and found[0]["final"] < 0.3


def test_detector_quiet_on_flat_and_on_falling_score():
    """No drop -> nothing; a drop while the scalarized score also falls is not interference."""
    assert rp.detect_interference(_log(), OBJS) == []
    assert rp.detect_interference(_log(drop_at=40, score_slope=-0.004), OBJS) == []
    assert rp.detect_interference(_log(drop_at=40, drop=0.04), OBJS, threshold=0.05) == []  # below threshold
    with pytest.raises(ValueError, match="score"):
        rp.detect_interference([{"step": 1, "reward/accuracy": 0.5}], OBJS)


def test_detector_without_score_uses_mean_reward():
    """Gradient-level logs have no score: the mean reward stands in, so a drop flags only while that mean rises."""
    rows = _log(drop_at=10, score=False)
    assert rp.detect_interference(rows, OBJS) == []  # accuracy falls faster than conciseness rises: mean falls
    for row in rows:
        row["reward/clarity"] += 0.01 * row["step"]  # now the mean reward rises while accuracy falls
    assert [d["objective"] for d in rp.detect_interference(rows, OBJS)] == ["accuracy"]


def test_detector_prefers_eval_curves():
    """With eval/<obj> in the log, the greedy test curve is the one judged."""
    found = rp.detect_interference(_log(drop_at=40, eval_every=5), OBJS, window=10)
    assert [(d["objective"], d["curve"]) for d in found] == [("accuracy", "eval/accuracy")]
    assert 45 <= found[0]["step"] <= 65


def test_bootstrap_known_cases():
    """A constant or single sample gives a zero-width interval; a symmetric two-point sample gives the analytic one."""
    const = rp.bootstrap([0.4] * 5)
    assert const["low"] == const["high"] == pytest.approx(0.4) and const["std"] == 0 and const["n"] == 5
    single = rp.bootstrap([0.7])
    assert single["low"] == single["high"] == single["mean"] == 0.7
    # five 0s and five 1s: a resampled mean is Binomial(10, 1/2) / 10, with P(<= 0.1) = 11/1024 < 2.5% < P(<= 0.2)
    # = 56/1024, and symmetrically above: the 95% percentile interval is [0.2, 0.8]
    two = rp.bootstrap([0.0] * 5 + [1.0] * 5)
    assert two["mean"] == 0.5 and (two["low"], two["high"]) == (pytest.approx(0.2), pytest.approx(0.8))
    assert rp.bootstrap([1.0, 2.0, 4.0]) == rp.bootstrap([1.0, 2.0, 4.0])  # seeded: the table is deterministic
    assert rp.bootstrap([math.nan, 1.0])["n"] == 1 and rp.bootstrap([])["n"] == 0


def test_bootstrap_covers_the_true_mean_at_its_rate():
    """400 seeded samples of 30 normal draws: the 95% interval holds the true mean in about 95% of them (the
    percentile bootstrap runs a little short at small n, hence the lower bound 0.90)."""
    rng = np.random.default_rng(1)
    hits = [(b["low"] <= 0.3 <= b["high"]) for b in (rp.bootstrap(rng.normal(0.3, 0.1, 30), resamples=2000, seed=i)
                                                    for i in range(400))]
    assert 0.90 <= np.mean(hits) <= 0.98


def test_separated_and_compare():
    """A difference is named only where the intervals do not overlap."""
    a, b, c = ({"final": {"accuracy": dict(mean=m, low=m - 0.02, high=m + 0.02)}} for m in (0.30, 0.40, 0.33))
    assert rp.separated(a["final"]["accuracy"], b["final"]["accuracy"])
    assert rp.compare(b, a, "accuracy") == "higher" and rp.compare(a, b, "accuracy") == "lower"
    assert rp.compare(a, c, "accuracy") == "no difference measured"


def test_spearman():
    """Monotone -> ±1; ties take their mean rank; too few points or a constant series -> nan."""
    assert rp.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert rp.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks [0, 1.5, 1.5, 3] against [0, 1, 2, 3]: 4.5 / sqrt(4.5 * 5)
    assert rp.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(4.5 / 5))
    assert math.isnan(rp.spearman([1, 2], [1, 2])) and math.isnan(rp.spearman([1, 1, 1], [1, 2, 3]))


C = [0.2, -0.1, 0.3, 0.0, -0.4, 1e-12, 0.5, -0.2]  # (c) realised probe changes: two steps have no sign
A = [0.1, 0.1, 0.2, 0.3, -0.1, 0.1, 0.2, 0.1]  # (a) cov: the sign of c at 4 of the 6 signed steps


def _law_log(a=A):
    """A log with the law's keys for accuracy (a as given, b = c³) and clarity (c always 0), none for conciseness,
    and a last step without a probe change, which the law test ignores."""
    rows = _log(steps=len(C) + 1)
    for row, a_s, c_s in zip(rows, a, C):
        row.update({"cov/accuracy": a_s, "law/grad/accuracy": c_s ** 3, "law/probe/accuracy": c_s,
                    "law/grad/clarity": 0.1, "law/probe/clarity": 0.0})
    rows[-1].update({"law/grad/accuracy": -5.0})
    return rows


def test_law_test_on_a_known_log():
    """Sign agreement over the steps with |c| > 1e-9, Spearman over all, per objective; None without law keys."""
    law = rp.law_test(_law_log(), OBJS)
    assert set(law) == {"accuracy", "clarity"}
    acc = law["accuracy"]
    assert (acc["steps"], acc["zero"]) == (8, 2)
    assert acc["sign_cov"] == pytest.approx(4 / 6) and acc["sign_grad"] == 1.0 and acc["rank_grad"] == pytest.approx(1)
    # ranks of A (ties averaged) and of C, by hand
    expected = np.corrcoef([2.5, 2.5, 5.5, 7, 0, 2.5, 5.5, 2.5], [5, 2, 6, 3, 0, 4, 7, 1])[0, 1]
    assert acc["rank_cov"] == pytest.approx(expected)
    assert law["clarity"]["zero"] == 8 and math.isnan(law["clarity"]["sign_grad"])  # no step with a sign
    assert rp.law_test(_log(), OBJS) is None


def test_rows_are_full_configurations(tmp_path, capsys):
    """Seeds and base models repeat a row; a changed lr or CTWA setting is a new row, labelled by its flags; a logging
    knob is not; summary.json keeps args (the flags besides seed, out dir, model) and each run's base model."""
    root, local_model = str(tmp_path), str(tmp_path / "my-base")
    runs = [_write_run(root, "lin-0", "linear", 0, ["--method", "linear"]),
            _write_run(root, "lin-1", "linear", 1, ["--method", "linear"], model="arith-s1"),
            _write_run(root, "lin-2", "linear", 2, ["--method", "linear"], model=local_model),
            _write_run(root, "lin-lr", "linear", 0, ["--method", "linear", "--lr", "3e-4"], lr=3e-4),
            _write_run(root, "ctwa-0", "ctwa", 0, []),
            _write_run(root, "ctwa-1", "ctwa", 1, ["--eval-interval", "5"], eval_interval=5),
            _write_run(root, "ctwa-t", "ctwa", 0, ["--ctwa-cov-targets", "0.15", "0.08", "0.08",
                                                   "--ctwa-lambda-lr=0.05"], ctwa_cov_targets=[0.15, 0.08, 0.08],
                       ctwa_lambda_lr=0.05),
            _write_run(root, "ctwa-g", "ctwa", 0, ["--ctwa-signal", "grad"], ctwa_signal="grad")]
    rp.report(runs, os.path.join(root, "summary"))
    saved = json.load(open(os.path.join(root, "summary", "summary.json")))
    rows = saved["methods"]
    assert [r["label"] for r in rows] == ["linear", "linear (lr 0.0003)", "ctwa (targets 0.3/0.08/0.08, λ 0.5)",
                                          "ctwa (targets 0.15/0.08/0.08, λ 0.05)",
                                          "ctwa (targets 0.3/0.08/0.08, λ 0.5, signal grad)"]
    assert [r["args"] for r in rows] == [["--method", "linear"], ["--method", "linear", "--lr", "3e-4"], [],
                                         ["--ctwa-cov-targets", "0.15", "0.08", "0.08", "--ctwa-lambda-lr=0.05"],
                                         ["--ctwa-signal", "grad"]]
    assert [(p["seed"], p["base_model"]) for p in rows[0]["runs"]] == [(0, "arith-s0"), (1, "arith-s1"),
                                                                        (2, "my-base")]
    spread = rows[0]["base_models"]["arith-s1"]
    assert spread["seeds"] == [1] and spread["accuracy"]["n"] == 1 and spread["accuracy"]["std"] == 0
    assert rows[2]["seeds"] == [0, 1] and rows[2]["ctwa"]["lambda_lr"] == 0.5 and rows[0]["ctwa"] is None
    assert {r["level"] for r in rows} == {"reward"} and rows[0]["law"] is None
    text = capsys.readouterr().out
    assert "| linear | 3 | " in text and "| arith-s0 | arith-s1 | my-base |" in text
    assert "| linear (lr 0.0003) | no difference measured |" in text  # the same log: nothing separates


def test_labels_without_argv_and_boolean_flags():
    """Logs without argv (older train.py) name the settings on which same-method rows differ; --no-<flag> is a
    boolean set off."""
    def group(method, argv=None, **config):
        return [dict(config={"method": method, "seed": 0, "steps": 60, "ctwa_cov_targets": [0.3, 0.08, 0.08],
                             "ctwa_lambda_lr": 0.5, "lagrangian_normalize": None, "argv": argv, **config})]
    groups = {"a": group("ctwa"), "b": group("ctwa", steps=5), "c": group("linear"),
              "d": group("lagrangian", ["--method", "lagrangian", "--no-lagrangian-normalize"],
                         lagrangian_normalize=False)}
    assert rp.label_groups(groups) == {"a": "ctwa (targets 0.3/0.08/0.08, λ 0.5, steps 60)",
                                       "b": "ctwa (targets 0.3/0.08/0.08, λ 0.5, steps 5)", "c": "linear",
                                       "d": "lagrangian (normalize off)"}
    assert rp.run_args(None) is None
    assert rp.run_args(["--method", "ctwa", "--seed", "3", "--model=arith-s2", "--out-dir", "x", "--lr", "1"]) == \
        ["--method", "ctwa", "--lr", "1"]


def test_report_summary(tmp_path, capsys):
    """Three methods × 2 seeds + a CTWA sweep -> markdown tables with intervals, detector lines, summary.{md,json}."""
    root = str(tmp_path)
    runs = [_write_run(root, f"linear-s{s}", "linear", s, ["--method", "linear"], log=_log(drop_at=40, eval_every=10,
                                                                                              seed=s)) for s in (0, 1)]
    coef = {f"coef/{o}": 1 / 3 for o in OBJS}  # gradient-level methods log coefficients, and no score
    runs += [_write_run(root, f"mgda-s{s}", "mgda", s, ["--method", "mgda"],
                        log=[{**row, **coef} for row in _log(eval_every=10, score=False, seed=s)]) for s in (0, 1)]
    runs += [_write_run(root, f"ctwa-s{s}", "ctwa", s, [], log=_law_log(A if s else C)) for s in (0, 1)]
    sweep = [_write_run(root, f"sweep-{i}", "ctwa", 0, ["--ctwa-cov-targets", *map(str, t)], ctwa_cov_targets=t,
                        log=_log(eval_every=10, targets=t)) for i, t in enumerate([[0.15, 0.08, 0.08], [-0.1] * 3])]
    out = rp.report(runs, os.path.join(root, "summary"), sweep_dirs=sweep, window=10)
    text = capsys.readouterr().out
    assert "| linear | 2 | 0.2" in text and "accuracy 2/2" in text and "fell" in text
    assert "| mgda | higher |" in text  # mgda kept its accuracy, linear's fell
    saved = json.load(open(os.path.join(root, "summary", "summary.json")))
    linear = saved["methods"][0]
    assert [r["label"] for r in saved["methods"]] == ["linear", "mgda", "ctwa (targets 0.3/0.08/0.08, λ 0.5)"]
    assert [r["level"] for r in saved["methods"]] == ["reward", "gradient", "reward"]
    assert linear["worst_change"][0] == "accuracy" and linear["worst_change"][1] < -0.1
    acc = linear["final"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.2, abs=0.02) and acc["low"] <= acc["mean"] <= acc["high"] and acc["n"] == 2
    assert [r["final"]["accuracy"] for r in linear["runs"]] == [pytest.approx(0.2, abs=0.02)] * 2
    assert linear["base"]["response_length"] == 30.0 and math.isnan(linear["base"]["conciseness"])
    assert [r["label"] for r in saved["sweep"]] == ["ctwa (targets 0.15/0.08/0.08, λ 0.5)",
                                                    "ctwa (targets -0.1/-0.1/-0.1, λ 0.5)"]
    hv = linear["hypervolume"]["mean"]
    assert hv == pytest.approx(np.mean([np.prod([r["final"][o] for o in OBJS]) for r in linear["runs"]]))
    points = [[r["final"][o]["mean"] for o in OBJS] for r in out["methods"]]  # what plots.py draws as the front
    assert [r["pareto"] for r in saved["methods"]] == rp.pareto_mask(points)
    assert saved["front_hypervolume"] == pytest.approx(rp.hypervolume(points))
    # the covariance law: run s0 has a = c (every sign agrees), run s1 a = A (4 of 6)
    law = saved["methods"][2]["law"]["accuracy"]
    assert law["runs"] == 2 and law["steps"] == 16 and law["zero"] == 4
    assert law["sign_cov"]["mean"] == pytest.approx((1 + 4 / 6) / 2) and law["sign_grad"]["low"] == 1.0
    md = open(os.path.join(root, "summary", "summary.md")).read()
    assert md.startswith("Mean over runs [95% percentile bootstrap") and "| method | runs | accuracy |" in md
    assert "| ctwa (targets 0.3/0.08/0.08, λ 0.5) | accuracy | 2 | 16 (4) |" in md.split("Covariance law on real")[1]
    assert saved["skipped"] == [] and saved["bootstrap"] == dict(resamples=10_000, level=0.95, seed=0)


def test_unreadable_runs_are_skipped(tmp_path, capsys):
    """Empty, garbled, unfinished and non-run folders are skipped with one line each; a half-written last line is
    dropped with a warning; mistakes in what was asked for stop with one line (SystemExit)."""
    root = str(tmp_path)
    good = _write_run(root, "good", "linear", 0, ["--method", "linear"])
    partial = _write_run(root, "partial", "linear", 1, ["--method", "linear"])
    with open(os.path.join(partial, "metrics.jsonl"), "a") as f:
        f.write('{"step": 81, "reward/acc')  # train.py killed mid-line: the run is complete up to step 80
    empty = _write_run(root, "empty", "linear", 2, ["--method", "linear"])
    open(os.path.join(empty, "metrics.jsonl"), "w").close()
    garbled = _write_run(root, "garbled", "linear", 3, ["--method", "linear"])
    lines = open(os.path.join(garbled, "metrics.jsonl")).read().splitlines()
    open(os.path.join(garbled, "metrics.jsonl"), "w").write("\n".join(lines[:5] + ["{oops"] + lines[5:]) + "\n")
    nostep = _write_run(root, "nostep", "linear", 4, ["--method", "linear"])
    with open(os.path.join(nostep, "metrics.jsonl"), "a") as f:
        f.write('{"score": 1.0}\n')
    running = _write_run(root, "running", "linear", 5, ["--method", "linear"], steps=100)
    os.makedirs(os.path.join(root, "not-a-run"))
    dirs = [good, partial, empty, garbled, nostep, running, os.path.join(root, "not-a-run")]
    out = rp.report(dirs, os.path.join(root, "summary"))
    captured = capsys.readouterr()
    assert "dropped the half-written last line 81" in captured.err
    assert [p["seed"] for p in out["methods"][0]["runs"]] == [0, 1]
    reasons = {os.path.basename(s["dir"]): s["reason"] for s in out["skipped"]}
    assert reasons == {"empty": "metrics.jsonl is empty", "garbled": "metrics.jsonl line 6 is not JSON",
                       "nostep": "metrics.jsonl line 81 has no 'step' key: is it a train.py metrics.jsonl?",
                       "running": "incomplete: its log ends at step 80 of 100 (still running, or stopped)",
                       "not-a-run": "no config.json: not a train.py --out-dir folder, or the run never started"}
    assert f"skipped {empty}: metrics.jsonl is empty" in captured.out
    with pytest.raises(SystemExit, match="no readable run among the 2 given"):
        rp.report([empty, garbled], os.path.join(root, "summary"))
    with pytest.raises(SystemExit, match="no such run folder"):
        rp.report([good, os.path.join(root, "typo")], os.path.join(root, "summary"))
    other = _write_run(root, "other", "linear", 0, ["--method", "linear"], objectives=OBJS[:2])
    with pytest.raises(SystemExit, match="different objective lists"):
        rp.report([good, other], os.path.join(root, "summary"))


def test_cli_runs_without_torch(tmp_path):
    """report.py on a run folder: summary.{md,json} under --out, the tables on stdout; it reads logs only (no torch)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = _write_run(str(tmp_path), "run", "ctwa", 0, [], log=_log(steps=20, eval_every=5))
    summary = str(tmp_path / "summary")
    res = subprocess.run([sys.executable, "report.py", "--runs", run, "--out", summary, "--window", "1"],
                         cwd=repo, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| ctwa (" in res.stdout and os.path.isfile(os.path.join(summary, "summary.md"))
    saved = json.load(open(os.path.join(summary, "summary.json")))
    assert saved["methods"][0]["method"] == "ctwa" and saved["methods"][0]["runs"][0]["final"]["accuracy"] >= 0
    res = subprocess.run([sys.executable, "-c", "import sys, report; sys.exit('torch' in sys.modules)"], cwd=repo,
                         timeout=300)
    assert res.returncode == 0, "report.py imports torch"
    assert rp.DEFAULT_MODEL == arith.BASE_MODELS[0]  # a run without --model started from it


def test_cli_mistake_is_one_line(tmp_path):
    """No readable run among those given: one line on stderr, no traceback."""
    empty = _write_run(str(tmp_path), "empty", "linear", 0, ["--method", "linear"])
    open(os.path.join(empty, "metrics.jsonl"), "w").close()
    res = subprocess.run([sys.executable, "report.py", "--runs", empty, "--out", str(tmp_path / "s")],
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == f"report.py: no readable run among the 1 given: {empty}: metrics.jsonl is empty\n"
