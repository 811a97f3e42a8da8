"""Runs that cannot be lost or mixed, and user errors that end in one line: train.py's run folder (checkpoint.py),
its flag checks and its loaders, probed as a careless or hostile user would.

    python -m pytest -q tests/test_runs.py
"""
import json
import os
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file, save_file

from test_train import ROOT, TINY, metrics, run


def one_line_error(proc, *words):
    """Exit status 1 with a single line on stderr that names the problem, and no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert all(w in err for w in words), (words, err)


BAD_FLAGS = [
    (["--lr", "-1"], ["--lr -1.0", "> 0"]), (["--lr", "0"], ["--lr 0.0"]),
    (["--prompts-per-step", "0"], ["--prompts-per-step 0", ">= 1"]), (["--micro-batch", "0"], ["--micro-batch 0"]),
    (["--checkpoint-interval", "0"], ["--checkpoint-interval 0"]), (["--kl-coef", "-1"], ["--kl-coef -1.0"]),
    (["--ctwa-cov-targets", "0.1", "0.1"], ["cov_targets has 2 entries, expected 3", "--ctwa-cov-targets"]),
    (["--fsdp"], ["--fsdp", "torchrun"]), (["--temperature", "0"], ["--temperature 0.0", "greedy"]),
    (["--ppo-epochs", "0"], ["--ppo-epochs 0"]), (["--group-size", "1"], ["--group-size 1", ">= 2"]),
    (["--clip-low", "5"], ["--clip-low 5.0", "(0, 1)"]), (["--method", "pama", "--kl-coef", "0.1"], ["--kl-coef"]),
    (["--method", "linear", "--adv", "grpo", "--group-size", "1"], ["--group-size 1"]),
    (["--compile", "--fsdp"], ["--compile", "--fsdp"]),
]


def test_bad_flags_one_line_each(tmp_path):
    """Every out-of-range flag is refused before any work, in one line naming the flag, its value and the range."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [(words, subprocess.Popen([sys.executable, "train.py", *flags, "--out-dir", str(tmp_path / str(i))],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
             for i, (flags, words) in enumerate(BAD_FLAGS)]
    for words, proc in procs:
        _, stderr = proc.communicate(timeout=120)
        one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), *words)
    assert not any(os.path.exists(tmp_path / str(i)) for i in range(len(BAD_FLAGS)))  # refused before any work


def broken_models(tiny_model, root):
    """Model folders a user might pass by mistake: (folder, words the error must contain)."""
    cases = []
    for name, damage in (("no_config", "config.json"), ("no_tokenizer", "tokenizer.json"),
                         ("no_weights", "model.safetensors"), ("truncated", "truncated"), ("gpt2", "gpt2")):
        path = root / name
        subprocess.run(["cp", "-r", tiny_model, str(path)], check=True)
        if name.startswith("no_"):
            os.remove(path / damage)
        elif name == "truncated":
            data = (path / "model.safetensors").read_bytes()
            (path / "model.safetensors").write_bytes(data[:len(data) // 2])
        else:
            cfg = json.loads((path / "config.json").read_text())
            (path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
        cases.append((str(path), [damage if name != "truncated" else "model.safetensors", damage]))
    return cases


def test_bad_model_folders_and_data_one_line_each(tiny_model, tmp_path):
    """A model folder without config, tokenizer or weights, a truncated safetensors file, an unsupported architecture,
    and empty or column-less math500 files each end in one line naming the file; nothing is left in --out-dir."""
    cases = [(["--model", path], words) for path, words in broken_models(tiny_model, tmp_path)]
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("")  # empty
    nocols = tmp_path / "nocols"
    nocols.mkdir()
    (nocols / "train.jsonl").write_text('{"question": "1+1", "solution": "2"}\n')
    (nocols / "test.jsonl").write_text('{"problem": "1+1", "answer": 2}\n')
    math = ["--task", "math500", "--model", tiny_model, "--max-prompt-tokens", "64"]
    cases += [([*math, "--data-path", str(data)], ["math500 train", "no usable rows"]),
              ([*math, "--data-path", str(nocols)], ["math500 train", "problem and answer"]),
              ([*math, "--data-path", str(tmp_path)], ["train.parquet", str(tmp_path)]),
              (["--model", str(tmp_path / "missing")], ["no such folder"])]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [(words, subprocess.Popen([sys.executable, "train.py", *TINY, *flags, "--out-dir", str(tmp_path / f"o{i}")],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
             for i, (flags, words) in enumerate(cases)]
    for words, proc in procs:
        _, stderr = proc.communicate(timeout=300)
        one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), *words)


def test_an_existing_run_is_never_overwritten_by_accident(tiny_model, tmp_path):
    """Re-running into a finished run's folder without --resume is refused and leaves it byte-identical; --overwrite
    moves it aside; --resume with a changed group size is refused, naming the flag and both values."""
    args = ["--model", tiny_model, *TINY, "--steps", "2", "--checkpoint-interval", "1"]
    run(args, tmp_path / "r")
    snapshot = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file() and p.name != ".lock"}
    one_line_error(run([*args, "--seed", "3"], tmp_path / "r", check=False), "holds a run", "--resume",
                   "--overwrite")
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    one_line_error(run([*args, "--steps", "4", "--group-size", "8", "--resume"], tmp_path / "r", check=False),
                   "--group-size 4 -> 8")
    proc = run([*args, "--seed", "3", "--overwrite"], tmp_path / "r")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.replaced-")]
    assert len(aside) == 1 and "moved the old run" in proc.stdout
    assert (aside[0] / "metrics.jsonl").read_bytes() == snapshot[tmp_path / "r" / "metrics.jsonl"]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["seed"] == 3


def test_a_second_live_run_on_the_same_folder_is_refused(tiny_model, tmp_path):
    """While a run holds --out-dir, a second one (even with --resume) refuses; once it is gone, its lock is stale."""
    args = ["--model", tiny_model, *TINY, "--steps", "200", "--checkpoint-interval", "1"]
    first = run(args, tmp_path / "r", wait=False)
    deadline = time.time() + 120
    while not (tmp_path / "r" / "step-1").is_dir() and time.time() < deadline:
        time.sleep(0.1)
    second = run([*args, "--resume"], tmp_path / "r", check=False)
    assert first.poll() is None, "the first run ended before the second started; make it longer"
    first.kill()
    first.wait()
    one_line_error(second, "in use by a live run", f"pid {first.pid}")
    proc = run([*args, "--steps", "2", "--resume"], tmp_path / "r")  # the killed run's lock is stale now
    assert "took over the stale lock" in proc.stdout


def test_resume_survives_a_partial_log_line_and_a_corrupt_checkpoint(tiny_model, tmp_path):
    """A half-written last metrics line is dropped with a warning, a damaged newest checkpoint (truncated, or NaN in the
    optimizer state) is skipped for the previous one, and the resumed run ends as the uninterrupted one does."""
    args = ["--model", tiny_model, *TINY, "--steps", "4", "--checkpoint-interval", "1"]
    run(args, tmp_path / "full")
    for damage in ("truncate", "nan"):
        out = tmp_path / damage
        run([*args, "--steps", "3"], out)
        with open(out / "metrics.jsonl", "a") as f:
            f.write('{"step": 4, "reward/acc')  # a kill in the middle of a write
        if damage == "truncate":
            state = out / "step-3" / "trainer_state.json"
            state.write_text(state.read_text()[:50])
        else:
            tensors = load_file(out / "step-3" / "optimizer.safetensors")
            first = next(iter(tensors))
            tensors[first] = tensors[first] * float("nan")
            save_file(tensors, out / "step-3" / "optimizer.safetensors")
        proc = run([*args, "--resume"], out)
        assert "skipped step-3" in proc.stdout and "half-written" in proc.stdout
        full, resumed = metrics(tmp_path / "full"), metrics(out)
        assert [r["step"] for r in resumed] == [1, 2, 3, 4]
        for a, b in zip(full, resumed):
            assert {k: v for k, v in a.items() if not k.startswith("time/")} == \
                pytest.approx({k: v for k, v in b.items() if not k.startswith("time/")}, rel=1e-6, abs=1e-7)
        assert json.loads((out / "config.json").read_text())["resumed"] == [2]
