"""eval.py: exact hypervolume, Pareto front, the interference detector and the summary from synthetic logs, and
checkpoint and base-model evaluation of a tiny random model.  Run: python -m pytest -q tests/test_eval.py
"""
import itertools
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import arith
import eval as ev
from model import ModelConfig, Transformer

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


def _write_run(root, name, method, seed, targets=None, **kw):
    path = os.path.join(root, name)
    os.makedirs(path)
    # train.py writes every method's flags, so non-CTWA runs carry the default CTWA targets too
    config = dict(method=method, task="arith", seed=seed, objectives=OBJS,
                  ctwa_cov_targets=targets or [0.15, 0.08, 0.08])
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for row in _log(seed=seed, targets=targets, **kw):
            f.write(json.dumps(row) + "\n")
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
    assert ev.hypervolume([[0.5, 0.4, 0.2]]) == pytest.approx(0.04)
    d1 = ev.hypervolume([(0.5, 0.5), (0.6, 0.55)], ref=(0.5, 0.5)) - ev.hypervolume([(0.5, 0.5)], ref=(0.5, 0.5))
    assert d1 == pytest.approx(0.0050, abs=1e-9)
    buf = [(0.5, 0.5), (0.7, 0.55)]
    assert ev.hypervolume(buf + [(0.6, 0.6)], buf[0]) - ev.hypervolume(buf, buf[0]) == pytest.approx(0.0050)
    buf = [(0.5, 0.5), (0.7, 0.6)]
    assert ev.hypervolume(buf + [(0.6, 0.55)], buf[0]) - ev.hypervolume(buf, buf[0]) == pytest.approx(0.0, abs=1e-12)
    buf = [(0.2, 0.2), (0.8, 0.9)]
    assert ev.hypervolume(buf + [(0.9, 0.95)], buf[0]) - ev.hypervolume(buf, buf[0]) == pytest.approx(0.1050)
    # three boxes of 0.25 pairwise overlapping in the 0.5-cube: 3·0.25 − 3·0.125 + 0.125
    assert ev.hypervolume([(1, 0.5, 0.5), (0.5, 1, 0.5), (0.5, 0.5, 1)]) == pytest.approx(0.5)
    assert ev.hypervolume([]) == 0.0 and ev.hypervolume([(0.0, 0.7, 0.7)]) == 0.0  # on the reference plane
    with pytest.raises(ValueError, match="coordinates"):
        ev.hypervolume([(0.5, 0.5)], ref=(0, 0, 0))


def test_hypervolume_matches_inclusion_exclusion():
    """Random K=3 point sets (with dominated points and ties): slicing equals inclusion–exclusion."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 4, 6):
        pts = np.round(rng.uniform(0, 1, (n, 3)), 1)  # rounding makes ties on every axis
        assert ev.hypervolume(pts) == pytest.approx(_hv_inclusion_exclusion(pts), abs=1e-12)


def test_pareto_mask():
    """Dominated points are dropped; equal points both stay."""
    pts = [(0.5, 0.5, 0.5), (0.6, 0.5, 0.5), (0.1, 0.9, 0.1), (0.1, 0.9, 0.1), (0.0, 0.8, 0.0)]
    assert ev.pareto_mask(pts) == [False, True, True, True, False]


def test_detector_flags_planted_drop():
    """Accuracy falls 0.3 from step 40 while the score rises: flagged near step 55, the other objectives quiet."""
    found = ev.detect_interference(_log(drop_at=40), OBJS, threshold=0.05, window=10)
    assert [d["objective"] for d in found] == ["accuracy"]
    assert 48 <= found[0]["step"] <= 62 and found[0]["curve"] == "reward/accuracy"
    assert found[0]["start"] - found[0]["value"] > 0.05 and found[0]["final"] < 0.3


def test_detector_quiet_on_flat_and_on_falling_score():
    """No drop -> nothing; a drop while the scalarized score also falls is not interference."""
    assert ev.detect_interference(_log(), OBJS) == []
    assert ev.detect_interference(_log(drop_at=40, score_slope=-0.004), OBJS) == []
    assert ev.detect_interference(_log(drop_at=40, drop=0.04), OBJS, threshold=0.05) == []  # below threshold
    with pytest.raises(ValueError, match="score"):
        ev.detect_interference([{"step": 1, "reward/accuracy": 0.5}], OBJS)


def test_detector_without_score_uses_mean_reward():
    """Gradient-level logs have no score: the mean reward stands in, so a drop flags only while that mean rises."""
    rows = _log(drop_at=10, score=False)
    assert ev.detect_interference(rows, OBJS) == []  # accuracy falls faster than conciseness rises: mean falls
    for row in rows:
        row["reward/clarity"] += 0.01 * row["step"]  # now the mean reward rises while accuracy falls
    assert [d["objective"] for d in ev.detect_interference(rows, OBJS)] == ["accuracy"]


def test_detector_prefers_eval_curves():
    """With eval/<obj> in the log, the greedy test curve is the one judged."""
    found = ev.detect_interference(_log(drop_at=40, eval_every=5), OBJS, window=10)
    assert [(d["objective"], d["curve"]) for d in found] == [("accuracy", "eval/accuracy")]
    assert 45 <= found[0]["step"] <= 65


def test_report_summary(tmp_path, capsys):
    """Three methods × 2 seeds + a CTWA sweep -> markdown table, detector lines, summary.{md,json} with the front."""
    root = str(tmp_path)
    runs = [_write_run(root, f"linear-s{s}", "linear", s, drop_at=40, eval_every=10) for s in (0, 1)]
    runs += [_write_run(root, f"mgda-s{s}", "mgda", s, eval_every=10, score=False) for s in (0, 1)]
    runs += [_write_run(root, f"ctwa-s{s}", "ctwa", s, targets=[0.15, 0.08, 0.08], eval_every=10) for s in (0, 1)]
    sweep = [_write_run(root, f"sweep-{i}", "ctwa", 0, targets=t, eval_every=10)
             for i, t in enumerate([[0.15, 0.08, 0.08], [-0.15, -0.08, -0.08], [0.1, 0.1, 0.1]])]
    out = ev.report(runs, os.path.join(root, "summary"), sweep_dirs=sweep, window=10)
    text = capsys.readouterr().out
    assert "| linear | 2 |" in text and "ctwa (0.15, 0.08, 0.08)" in text and "accuracy 2/2" in text
    assert "interference" in text and "fell" in text
    saved = json.load(open(os.path.join(root, "summary", "summary.json")))
    linear = saved["methods"][0]
    assert [r["label"] for r in saved["methods"]] == ["linear", "mgda", "ctwa (0.15, 0.08, 0.08)"]
    assert linear["worst_change"][0] == "accuracy" and linear["worst_change"][1] < -0.1
    assert linear["final"]["accuracy"][0] == pytest.approx(0.2, abs=0.02)  # last eval point
    assert linear["base"]["response_length"] == 30.0 and len(saved["sweep"]) == 3
    assert math.isnan(linear["base"]["conciseness"])  # step-0 conciseness has no running mean: not a baseline
    assert open(os.path.join(root, "summary", "summary.md")).read().startswith("| method | seeds | accuracy")
    hv = linear["hypervolume"][0]
    finals = [r["final"] for r in linear["runs"]]
    assert hv == pytest.approx(np.mean([np.prod([f[o] for o in OBJS]) for f in finals]))
    points = [[r["final"][o][0] for o in OBJS] for r in out["methods"]]  # what plots.py draws as the front
    assert [r["pareto"] for r in saved["methods"]] == ev.pareto_mask(points)
    assert saved["front_hypervolume"] == pytest.approx(ev.hypervolume(points))


def test_load_run_errors_name_the_fix(tmp_path):
    """A folder without train.py's files, or a log line without a step, gives a clear error."""
    with pytest.raises(FileNotFoundError, match="train.py"):
        ev.load_run(str(tmp_path))
    path = _write_run(str(tmp_path), "r", "linear", 0)
    with open(os.path.join(path, "metrics.jsonl"), "a") as f:
        f.write('{"score": 1.0}\n')
    with pytest.raises(ValueError, match="line 81"):
        ev.load_run(path)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random 1-layer model with the arith tokenizer, saved as an HF folder like train.py's step-N."""
    path = str(tmp_path_factory.mktemp("run") / "step-2")
    torch.manual_seed(0)
    tok = arith.tokenizer()
    cfg = ModelConfig(model_type="llama", vocab_size=len(arith.VOCAB), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Transformer(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_evaluate_checkpoints(tiny_checkpoint):
    """Greedy and sampled scoring give every objective in [0, 1]; the threshold source is reported."""
    kw = dict(num_prompts=3, max_new_tokens=6)
    (r,) = ev.evaluate_checkpoints([tiny_checkpoint], "arith", **kw)
    assert set(OBJS) | {"response_length", "all_wrong", "length_threshold", "threshold_source", "completions"} <= set(r)
    assert all(0 <= r[o] <= 1 for o in OBJS) and 1 <= r["response_length"] <= 6 and r["prompts"] == 3
    assert r["all_wrong"] == pytest.approx(1 - r["accuracy"])  # one greedy sample per prompt
    assert r["threshold_source"].startswith("mean response length") and r["length_threshold"] == r["response_length"]
    (s,) = ev.evaluate_checkpoints([tiny_checkpoint], "arith", length_threshold=100.0, samples=2, temperature=1.0,
                                   **kw)
    assert s["conciseness"] == 1.0 and s["completions"] == 6 and s["threshold_source"] == "--length-threshold"
    with open(os.path.join(tiny_checkpoint, "trainer_state.json"), "w") as f:
        json.dump({"scorer": {"length_sum": 30.0, "length_count": 10}}, f)
    (t,) = ev.evaluate_checkpoints([tiny_checkpoint], "arith", **kw)
    assert t["length_threshold"] == 3.0 and t["threshold_source"].endswith("trainer_state.json")
    with pytest.raises(ValueError, match="temperature"):
        ev.evaluate_checkpoints([tiny_checkpoint], "arith", samples=2, **kw)
    with pytest.raises(ValueError, match="unknown task"):
        ev.evaluate_checkpoints([tiny_checkpoint], "gsm8k", **kw)


def test_score_completions_all_wrong():
    """all_wrong counts the prompts (rows prompt-major, G per prompt) whose every sample has accuracy 0."""
    out = dict(responses=["\\boxed{1}", "x", "y", "z"], lengths=[3, 1, 1, 1], answers=["1", "1", "2", "2"], samples=2)
    r = ev.score_completions(out, 2.0)
    assert r["all_wrong"] == 0.5 and r["accuracy"] == 0.25 and r["conciseness"] == 0.75 and r["response_length"] == 1.5


def test_base_scores(tiny_checkpoint):
    """Sampled and greedy step-0 scores, both judged against the sampled mean length, as at training step 1."""
    scores = ev.base_scores(tiny_checkpoint, group_size=2, num_prompts=3)
    assert set(scores) == {"sampled", "greedy"}
    threshold = scores["sampled"]["response_length"]
    assert scores["greedy"]["length_threshold"] == scores["sampled"]["length_threshold"] == threshold
    assert all(0 <= s[k] <= 1 for s in scores.values() for k in [*OBJS, "all_wrong"])


def test_cli_checkpoints_base_models_and_runs(tiny_checkpoint, tmp_path):
    """eval.py on a run folder's checkpoint (table + JSON), on a base model (scores.json) and on its log (summary)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = _write_run(str(tmp_path), "run", "ctwa", 0, targets=[0.15, 0.08, 0.08], steps=20, eval_every=5)
    shutil.copytree(tiny_checkpoint, os.path.join(run, "step-1"))
    with open(os.path.join(run, "step-1", "trainer_state.json"), "w") as f:
        json.dump({"scorer": {"length_sum": 30.0, "length_count": 10}}, f)
    base, summary, out = str(tmp_path / "base"), str(tmp_path / "summary"), str(tmp_path / "eval.json")
    shutil.copytree(tiny_checkpoint, base, ignore=shutil.ignore_patterns("trainer_state.json"))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # eager paths: full speed
    res = subprocess.run([sys.executable, "eval.py", "--checkpoints", os.path.join(run, "step-1"), "--prompts", "3",
                          "--max-new-tokens", "6", "--out", out, "--base-models", base, "--runs", run,
                          "--summary-dir", summary, "--window", "1"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| checkpoint | accuracy | conciseness | clarity |" in res.stdout and "| ctwa (" in res.stdout
    assert f"| {base} | greedy |" in res.stdout
    (r,) = json.load(open(out))["results"]
    assert r["threshold_source"].endswith(os.path.join("step-1", "trainer_state.json")) and r["length_threshold"] == 3
    assert all(0 <= r[o] <= 1 for o in OBJS)
    recorded = json.load(open(os.path.join(base, "scores.json")))
    assert recorded["max_new_tokens"] == arith.MAX_NEW_TOKENS and set(recorded) >= {"sampled", "greedy"}
    saved = json.load(open(os.path.join(summary, "summary.json")))
    assert saved["methods"][0]["method"] == "ctwa" and saved["methods"][0]["runs"][0]["final"]["accuracy"] >= 0
