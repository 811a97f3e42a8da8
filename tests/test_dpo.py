"""dpo.py end to end on CPU: every method, the arith pairs, DDP == one process, SIGKILL + resume, the data loaders.

    python -m pytest -q tests/test_dpo.py

Each test runs dpo.py in a subprocess (torchrun for DDP) from the shipped arith base model on a few prompts, with
TRITON_INTERPRET removed so the eager kernels run at full speed.
"""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--prompts", "48", "--group-size", "4", "--batch-size", "8", "--micro-batch", "4", "--steps", "3"]
METHODS = ["linear", "mgda", "pcgrad", "cagrad", "raco", "nash_mtl", "famo", "gradnorm"]


def dpo(args, out, nproc=1, wait=True):
    """Run dpo.py (torchrun when nproc > 1) writing to `out`; returns the finished process (or the running one)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if nproc > 1:
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}"]
    cmd = [*launcher, "dpo.py", *args, "--out-dir", str(out)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def ok(proc):
    assert proc.returncode == 0, f"{' '.join(proc.args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(folder):
    return load_file(folder / "model.safetensors")


RACO = ["--method", "raco", *TINY, "--prompts", "96", "--weights", "0.6", "0.2", "0.2"]


@pytest.fixture(scope="module")
def raco_run(tmp_path_factory):
    """One RACO run on 96 prompts: the pairs test reads it, the DDP test compares two ranks with it."""
    out = tmp_path_factory.mktemp("raco")
    ok(dpo(RACO, out))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_three_steps(tmp_path, raco_run, method):
    """Every method trains 3 steps from the arith pairs, logs finite per-objective losses and coefficients, and saves
    a checkpoint that loads; step 1 starts at the reference (DPO loss log 2)."""
    out = raco_run if method == "raco" else tmp_path
    if method != "raco":
        ok(dpo(["--method", method, *TINY], out))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for o in tasks.OBJECTIVES:
            assert torch.isfinite(torch.tensor([r[f"loss/{o}"], r[f"coef/{o}"], r[f"pair_accuracy/{o}"]])).all(), r
    assert rows[0]["loss/accuracy"] == pytest.approx(0.693147, abs=1e-5)
    assert all(torch.isfinite(t).all() for t in weights(out / "step-3").values())
    with open(out / "config.json") as f:
        assert json.load(f)["method"] == method


def test_arith_pairs_follow_the_rewards(raco_run):
    """Every arith pair's chosen completion beats its rejected one on its objective (rescored with tasks.score), the
    conflict counts in pairs.json recount, and the objectives do conflict (accuracy against conciseness)."""
    tmp_path = raco_run
    with open(tmp_path / "pairs.json") as f:
        stats = json.load(f)
    for k, o in enumerate(tasks.OBJECTIVES):
        with open(tmp_path / f"pairs-{o}.jsonl") as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == stats["pairs"][o] > 8
        chosen, rejected = (tasks.score([r[c] for r in rows], [r[f"{c}_length"] for r in rows],
                                        [r["answer"] for r in rows], stats["length_threshold"])
                            for c in ("chosen", "rejected"))  # (n, 3) each
        assert (chosen[:, k] > rejected[:, k]).all(), o
        for j, other in enumerate(tasks.OBJECTIVES):
            if j != k:
                share = (chosen[:, j] < rejected[:, j]).double().mean().item()
                assert stats["conflicts"][o][other] == pytest.approx(share)
    assert stats["conflicts"]["accuracy"]["conciseness"] > 0.1 and stats["conflicts"]["conciseness"]["clarity"] > 0.1


def test_ddp_two_processes_match_one(tmp_path, raco_run):
    """2-rank DDP (gloo) gives the same pairs, per-objective losses, RACO coefficients and final model as one
    process: the batch is split by rank and the Gram is the global one."""
    ok(dpo(RACO, tmp_path, nproc=2))
    for name in [f"pairs-{o}.jsonl" for o in tasks.OBJECTIVES]:
        assert (raco_run / name).read_text() == (tmp_path / name).read_text()
    one, two = metrics(raco_run), metrics(tmp_path)
    for a, b in zip(one, two, strict=True):
        for key in [k for k in a if k.split("/")[0] in ("loss", "coef", "margin", "grad_cos")]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert one[-1]["loss/accuracy"] != one[0]["loss/accuracy"]  # the trajectory compared is not a constant
    wa, wb = weights(raco_run / "step-3"), weights(tmp_path / "step-3")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """A FAMO run (optimizer and method state) killed with SIGKILL after a checkpoint and resumed ends with the same
    metrics and model as an uninterrupted one."""
    args = ["--method", "famo", *TINY, "--steps", "16", "--checkpoint-interval", "2"]
    ok(dpo(args, tmp_path / "full"))
    proc = dpo(args, tmp_path / "killed", wait=False)
    for _ in range(15_000):  # poll for up to 5 minutes: kill it as soon as its step-2 checkpoint is in place
        if (tmp_path / "killed" / "step-2").is_dir() or proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    assert not os.path.isdir(tmp_path / "killed" / "step-16")
    refused = dpo(args, tmp_path / "killed")  # the folder holds a run: continue it with --resume, nothing else
    assert refused.returncode == 1 and "pass --resume to continue it" in refused.stderr
    ok(dpo([*args, "--resume"], tmp_path / "killed"))
    full, resumed = metrics(tmp_path / "full"), metrics(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 17))
    for a, b in zip(full, resumed):
        a.pop("time/step"), b.pop("time/step")
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    wa, wb = weights(tmp_path / "full" / "step-16"), weights(tmp_path / "killed" / "step-16")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


SAFETY_ROWS = [dict(prompt=f"What is {i}+{i}?", response_0=f"It is {2 * i}.", response_1="I will not say.",
                    better_response_id=i % 2, safer_response_id=1, is_response_0_safe=True) for i in range(8)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_safety_layout_and_pair_files_train(tmp_path):
    """A PKU-SafeRLHF-style file gives two objectives (helpful from better_response_id, harmless from
    safer_response_id) and trains; prompt/chosen/rejected files in JSONL and parquet give one objective each."""
    safety = write_jsonl(tmp_path / "safety.jsonl", SAFETY_ROWS)
    proc = ok(dpo(["--model", "arith-s0", "--data", safety, "--steps", "2", "--batch-size", "4"], tmp_path / "a"))
    assert "disagree on 50.0%" in proc.stdout  # better_response_id alternates, safer_response_id is always 1
    assert "objectives helpful/harmless | pairs 8/8" in proc.stdout
    assert [r["step"] for r in metrics(tmp_path / "a")] == [1, 2]
    pairs = [dict(prompt=r["prompt"], chosen=r["response_0"], rejected=r["response_1"]) for r in SAFETY_ROWS]
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "terse.parquet")
    args = ["--model", "arith-s0", "--data", f"verbose={write_jsonl(tmp_path / 'v.jsonl', pairs[::-1])}",
            str(tmp_path / "terse.parquet"), "--method", "mgda", "--steps", "1", "--batch-size", "4"]
    ok(dpo(args, tmp_path / "b"))
    with open(tmp_path / "b" / "config.json") as f:
        assert json.load(f)["objectives"] == ["verbose", "terse"]


@pytest.mark.parametrize("case, message", [
    ("bad_label", "safety.jsonl row 3, column 'better_response_id': expected 0 or 1, got 2"),
    ("missing_cell", "safety.jsonl row 5, column 'response_1': missing"),
    ("no_columns", "safety.jsonl row 1: no column 'rejected'"),
    ("empty", "safety.jsonl: empty, no preference rows"),
])
def test_malformed_data_is_one_line_error(tmp_path, case, message):
    """Malformed preference files stop dpo.py with one line naming the file, row and column, and no traceback."""
    rows = [dict(r) for r in SAFETY_ROWS]
    if case == "bad_label":
        rows[2]["better_response_id"] = 2
    elif case == "missing_cell":
        del rows[4]["response_1"]
    elif case == "no_columns":
        rows = [dict(prompt="p", chosen="c")]
    path = write_jsonl(tmp_path / "safety.jsonl", [] if case == "empty" else rows)
    proc = dpo(["--model", "arith-s0", "--data", path], tmp_path / "out")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


def test_sweep_hypervolume_and_summary():
    """results/dpo/sweep.py: the 2-D hypervolume of a staircase by hand, and mean ± std over seeds per weight."""
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "results", "dpo", "sweep.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    assert sweep.hypervolume_2d([(0.5, 0.5)]) == pytest.approx(0.25)
    # (1, 0.2) and (0.2, 1) dominate 0.2 + 0.2 * 0.8 = 0.36; (0.1, 0.1) is dominated and adds nothing
    assert sweep.hypervolume_2d([(1.0, 0.2), (0.2, 1.0), (0.1, 0.1)]) == pytest.approx(0.36)
    runs = [dict(method="raco", w=0.5, seed=s, accuracy=a, conciseness=1 - a, clarity=0.5, response_length=10.0,
                 share=0.5) for s, a in enumerate([0.2, 0.4])]
    rows, fronts = sweep.summarize(runs)
    assert rows[0]["accuracy"] == pytest.approx((0.3, 0.1414213), rel=1e-5) and rows[0]["seeds"] == [0, 1]
    assert fronts["raco"][0] == pytest.approx((0.2 * 0.8 + 0.4 * 0.6) / 2)
