"""train.py end to end on CPU: every method, DDP == one process, FSDP2, kill -9 + resume, NaN skip, bad flags.

    python -m pytest -q tests/test_train.py

Each test runs train.py in a subprocess (as a user would, torchrun for the distributed ones) on a tiny arith model
warm-started for a few steps, with TRITON_INTERPRET removed so the eager kernels run at full speed.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import scalarize
import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--steps", "3", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "24", "--micro-batch", "8",
        "--eval-interval", "0", "--checkpoint-interval", "100"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The arith base model recipe cut to 30 warm-start steps: real tokenizer and format, half-trained weights."""
    return tasks.arith_base_model(str(tmp_path_factory.mktemp("arith") / "base"), steps=30)


def run(args, out, nproc=1, check=True, wait=True):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"  # deterministic and no oversubscription when two ranks share two cores
    if nproc == 1:
        cmd = [sys.executable, "train.py"]
    else:
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
               "train.py"]
    cmd += [*args, "--out-dir", str(out)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.parametrize("method", sorted({**scalarize.METHODS, "ctwa": None}))
def test_every_method_runs_three_steps(tiny_model, tmp_path, method):
    """Every method trains 3 steps, logs finite rewards, covariances and loss, and saves a loadable checkpoint."""
    run(["--method", method, "--model", tiny_model, *TINY], tmp_path)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("reward/accuracy", "reward/conciseness", "reward/clarity", "cov/accuracy", "loss", "grad_norm"):
            assert torch.isfinite(torch.tensor(r[key])), (key, r)
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "step-3").values())


def test_ddp_two_processes_match_one(tiny_model, tmp_path):
    """2-rank DDP (gloo) gives the same CTWA weight trajectory and final model as one process with the same batch."""
    args = ["--method", "ctwa", "--model", tiny_model, *TINY, "--ctwa-cov-targets", "0.5", "0.5", "0.5"]
    run(args, tmp_path / "one")
    run(args, tmp_path / "two", nproc=2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        for key in ("reward/accuracy", "reward/conciseness", "reward/clarity", "weight/accuracy", "weight/conciseness",
                    "weight/clarity", "cov/accuracy", "loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert one[-1]["weight/accuracy"] > one[0]["weight/accuracy"]  # the trajectory compared is not a constant
    wa, wb = weights(tmp_path / "one" / "step-3"), weights(tmp_path / "two" / "step-3")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_fsdp2_smoke(tiny_model, tmp_path):
    """2-rank FSDP2 (fully_shard) trains, and its checkpoint is a whole model that loads and matches DDP's."""
    args = ["--method", "linear", "--model", tiny_model, *TINY, "--steps", "2"]
    run([*args, "--fsdp"], tmp_path / "fsdp", nproc=2)
    run(args, tmp_path / "ddp", nproc=2)
    wa, wb = weights(tmp_path / "fsdp" / "step-2"), weights(tmp_path / "ddp" / "step-2")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_sigkill_then_resume_matches_uninterrupted(tiny_model, tmp_path):
    """A run killed with SIGKILL after a checkpoint and resumed ends with the same model and metrics."""
    args = ["--method", "ctwa", "--model", tiny_model, *TINY, "--steps", "8", "--checkpoint-interval", "2"]
    run(args, tmp_path / "full")
    proc = run(args, tmp_path / "killed", wait=False)
    deadline = time.time() + 300
    while not os.path.isdir(tmp_path / "killed" / "step-2") and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.isdir(tmp_path / "killed" / "step-8")
    run([*args, "--resume"], tmp_path / "killed")
    full, resumed = metrics(tmp_path / "full"), metrics(tmp_path / "killed")
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    for a, b in zip(full, resumed):
        for key in [k for k in a if k.startswith("time/")]:  # wall-clock seconds differ run to run
            a.pop(key), b.pop(key)
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    wa, wb = weights(tmp_path / "full" / "step-8"), weights(tmp_path / "killed" / "step-8")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_nan_loss_skips_the_update(tiny_model, tmp_path):
    """A NaN loss at step 2 leaves the weights untouched, is counted, and training goes on."""
    run(["--model", tiny_model, *TINY, "--checkpoint-interval", "1", "--fault-nan-step", "2"], tmp_path)
    rows = metrics(tmp_path)
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1]
    w1, w2, w3 = (weights(tmp_path / f"step-{s}") for s in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)


def test_bad_flags_are_argparse_errors(tmp_path):
    """An unknown method or flag is an argparse error that lists the choices."""
    proc = run(["--method", "nope"], tmp_path, check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "ctwa" in proc.stderr
    proc = run(["--no-such-flag"], tmp_path, check=False)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr
