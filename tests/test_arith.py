"""Tests for arith.py: the generator and its exact answers, the styles, the tokenizer, the base-model recipe, and the
shipped base models reproducing their recorded step-0 scores.

    python -m pytest -q tests/test_arith.py
"""
import json
import os
import random
import re

import pytest
import torch

import arith
import rollout
import tasks
from model import Transformer
from tasks import OBJECTIVES, accuracy, clarity

# Recorded and recomputed step-0 greedy means are equal on the machine that recorded them; elsewhere CPU floating
# point may flip a near-tie token on a prompt or two: 0.01 = 5 of the 500 test prompts, 0.2 tokens of mean length.
SCORE_TOL, LENGTH_TOL = 0.01, 0.2


def test_load_task_deterministic_and_exact():
    """A split is a fixed sequence of prompts; answers are exact; all four levels occur; splits differ."""
    tok = arith.tokenizer()
    a = arith.load_task("test", tok)
    assert a.prompts == arith.load_task("test", tok).prompts and len(a.prompts) == arith.SIZES["test"] == 500
    assert a.texts[:100] == arith.load_task("test", tok, num_prompts=100).texts
    assert a.texts[:100] != arith.load_task("val", tok).texts[:100]
    for text, answer in zip(a.texts, a.answers):
        assert re.fullmatch(r"[0-9+\-*()]+", text) and str(eval(text)) == answer  # generated text only
    assert any("(" in t for t in a.texts) and any(re.fullmatch(r"\d\d\*\d\d", t) for t in a.texts)
    assert len(arith.load_task("train", tok, num_prompts=7).prompts) == 7
    with pytest.raises(ValueError, match="unknown split"):
        arith.load_task("dev", tok)


def test_styles_score_as_designed():
    """Worked styles are accurate; guess/direct answer without working; clarity and length differ by style."""
    tok, rng = arith.tokenizer(), random.Random(0)
    for _ in range(50):
        text, steps, answer = arith.problem(rng)
        resp = {s: arith.response(steps, answer, s) for s in arith.STYLES}
        scores = {s: (accuracy(r, str(answer)), clarity(r)) for s, r in resp.items()}
        assert scores == {"steps": (1, 1), "worked": (1, 0), "guess": (1, 1), "direct": (1, 0), "plain": (0, 0)}
        n = {s: len(tok(r, add_special_tokens=False)["input_ids"]) for s, r in resp.items()}
        assert n["steps"] > n["guess"] > n["direct"] > n["plain"] and n["steps"] + 1 <= arith.MAX_NEW_TOKENS
        assert all(tok.decode(tok(r, add_special_tokens=False)["input_ids"]) == r for r in resp.values())
    with pytest.raises(ValueError, match="unknown arith style"):
        arith.response([], 1, "poem")


def test_tokenizer_round_trip(tmp_path):
    """The saved tokenizer reloads with its chat template and special tokens."""
    tok = arith.tokenizer()
    tok.save_pretrained(tmp_path)
    again = tasks.load_tokenizer(str(tmp_path))
    assert tasks.encode_prompts(again, ["(1+2)*3"]) == tasks.encode_prompts(tok, ["(1+2)*3"])
    assert again.eos_token_id == 1 and again.pad_token_id == 0 and len(again) == len(arith.VOCAB)
    assert again.decode(tok("Step 1: 3\n<eos>")["input_ids"], skip_special_tokens=True) == "Step 1: 3\n"


def test_build_base_model_recipe_builds_and_reuses(tmp_path):
    """30 recipe steps write a loadable HF folder; the same recipe reuses it, another one or force rebuilds it."""
    out = str(tmp_path / "base")
    assert arith.build_base_model(out, steps=30) == out
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "arith_recipe.json"} <= set(os.listdir(out))
    tok = tasks.load_tokenizer(out)
    assert tasks.eos_ids(out, tok) == [tok.eos_token_id] == [1]
    assert Transformer.from_pretrained(out).config.vocab_size == len(arith.VOCAB)
    stamp = os.path.getmtime(os.path.join(out, "model.safetensors"))
    arith.build_base_model(out, steps=30)
    assert os.path.getmtime(os.path.join(out, "model.safetensors")) == stamp  # reused, not rebuilt
    arith.build_base_model(out, steps=2, batch_size=4)
    with open(os.path.join(out, "arith_recipe.json")) as f:
        assert json.load(f)["steps"] == 2
    with pytest.raises(ValueError, match="unknown recipe keys"):
        arith.build_base_model(out, epochs=1)


def test_base_model_names_and_errors(monkeypatch, tmp_path):
    """Shipped names resolve to base_models/<name> beside arith.py; an unknown name or a missing folder says why."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert arith.base_model() == os.path.join(repo, "base_models", "arith-s0")
    with pytest.raises(ValueError, match="arith-s0"):
        arith.base_model("arith-s9")
    monkeypatch.setattr(arith, "BASE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="git checkout"):
        arith.base_model("arith-s1")


@pytest.mark.parametrize("name", arith.BASE_MODELS)
def test_shipped_base_model_reproduces_its_scores(name, one_thread):
    """Each shipped model loads and its greedy step-0 scores on the test split match scores.json (SCORE_TOL)."""
    path = arith.base_model(name)
    with open(os.path.join(path, "arith_recipe.json")) as f:
        assert f"arith-s{json.load(f)['seed']}" == name  # built by RECIPE with its own seed
    with open(os.path.join(path, "scores.json")) as f:
        recorded = json.load(f)
    tok, model = tasks.load_tokenizer(path), Transformer.from_pretrained(path).eval()
    task = arith.load_task(recorded["split"], tok)
    with torch.no_grad():
        ro = rollout.generate(model, task.prompts, recorded["max_new_tokens"], temperature=0.0,
                              eos_ids=tasks.eos_ids(path, tok), pad_id=tok.pad_token_id)
    lengths = [len(c) for c in ro.completions]
    greedy = recorded["greedy"]
    rewards = tasks.score(tok.batch_decode(ro.completions, skip_special_tokens=True), lengths, task.answers,
                          greedy["length_threshold"])  # (500, K)
    for k, objective in enumerate(OBJECTIVES):
        assert rewards[:, k].double().mean().item() == pytest.approx(greedy[objective], abs=SCORE_TOL), objective
    assert sum(lengths) / len(lengths) == pytest.approx(greedy["response_length"], abs=LENGTH_TOL)
    assert set(OBJECTIVES) <= set(recorded["sampled"]) and 0 < recorded["sampled"]["accuracy"] < greedy["accuracy"]
