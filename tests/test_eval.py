"""eval.py: checkpoint and base-model evaluation of a tiny random model, from Python and from the command line.
Run: python -m pytest -q tests/test_eval.py
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import arith
import eval as ev
from model import ModelConfig, Transformer

OBJS = ["accuracy", "conciseness", "clarity"]


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


def test_cli_checkpoints_and_base_models(tiny_checkpoint, tmp_path):
    """eval.py on a run folder's checkpoint (table + JSON) and on a base model (scores.json)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = str(tmp_path / "run")
    shutil.copytree(tiny_checkpoint, os.path.join(run, "step-1"))
    with open(os.path.join(run, "step-1", "trainer_state.json"), "w") as f:
        json.dump({"scorer": {"length_sum": 30.0, "length_count": 10}}, f)
    base, out = str(tmp_path / "base"), str(tmp_path / "eval.json")
    shutil.copytree(tiny_checkpoint, base, ignore=shutil.ignore_patterns("trainer_state.json"))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # eager paths: full speed
    res = subprocess.run([sys.executable, "eval.py", "--checkpoints", os.path.join(run, "step-1"), "--prompts", "3",
                          "--max-new-tokens", "6", "--out", out, "--base-models", base],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| checkpoint | accuracy | conciseness | clarity |" in res.stdout
    assert f"| {base} | greedy |" in res.stdout
    (r,) = json.load(open(out))["results"]
    assert r["threshold_source"].endswith(os.path.join("step-1", "trainer_state.json")) and r["length_threshold"] == 3
    assert all(0 <= r[o] <= 1 for o in OBJS)
    recorded = json.load(open(os.path.join(base, "scores.json")))
    assert recorded["max_new_tokens"] == arith.MAX_NEW_TOKENS and set(recorded) >= {"sampled", "greedy"}
