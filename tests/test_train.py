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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--steps", "3", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "24", "--micro-batch", "8",
        "--eval-interval", "0", "--checkpoint-interval", "100"]


def run(args, out, nproc=1, check=True, wait=True, script="train.py"):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"  # deterministic and no oversubscription when two ranks share two cores
    if nproc == 1:
        cmd = [sys.executable, script]
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
        for key in ("reward/accuracy", "reward/conciseness", "reward/clarity", "cov/accuracy", "loss", "grad_norm",
                    "law/grad/accuracy", "law/cos/clarity", "probe/accuracy", "law/probe/conciseness"):
            assert torch.isfinite(torch.tensor(r[key])), (key, r)
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "step-3").values())


def test_ctwa_gradient_signal(tiny_model, tmp_path):
    """--ctwa-signal grad: CTWA targets the cosine of each objective's policy gradient with the update made (computed
    even with the law test off), and its weights move on it."""
    run(["--model", tiny_model, *TINY, "--ctwa-signal", "grad", "--ctwa-cov-targets", "0.9", "0.9", "0.9",
         "--law-interval", "0"], tmp_path)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3] and all("law/cos/accuracy" in r and "probe/accuracy" not in r
                                                          for r in rows)
    for r in rows:  # EMA of the cosine below the 0.9 target: every weight grows by lambda * deficit
        assert all(abs(r[f"law/cos/{o}"]) <= 1 and r[f"deficit/{o}"] > 0 for o in ("accuracy", "clarity"))
    assert rows[-1]["weight/accuracy"] > rows[0]["weight/accuracy"]


def test_ddp_two_processes_match_one(tiny_model, tmp_path):
    """2-rank DDP (gloo) gives the same metrics (every key: rewards, CTWA's weights, covariances, the law's statistics,
    loss, entropy, KL, clip fraction) and final model as one process with the same batch."""
    args = ["--method", "ctwa", "--model", tiny_model, *TINY, "--ctwa-cov-targets", "0.5", "0.5", "0.5"]
    run(args, tmp_path / "one")
    run(args, tmp_path / "two", nproc=2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for a, b in zip(one, two, strict=True):  # every logged statistic, reduced over ranks, equals one process's
        assert set(a) == set(b)
        for key in (k for k in a if not k.startswith(("time/", "memory/"))):
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


# runs train.py with the gradient norm of its second optimizer step made NaN, as a NaN loss or an overflow would
NAN_AT_STEP_2 = """
import runpy, sys, torch
sys.path.insert(0, ".")  # the repo root (the working directory): train.py's own imports
clip, calls = torch.nn.utils.clip_grad_norm_, [0]
def nan_on_second_call(*args, **kwargs):
    calls[0] += 1
    norm = clip(*args, **kwargs)
    return norm * float("nan") if calls[0] == 2 else norm
torch.nn.utils.clip_grad_norm_ = nan_on_second_call
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_nan_gradient_skips_the_update(tiny_model, tmp_path):
    """A non-finite gradient at step 2 leaves the weights untouched, is counted, and training goes on."""
    (tmp_path / "nan_at_step_2.py").write_text(NAN_AT_STEP_2)
    run(["--model", tiny_model, *TINY, "--checkpoint-interval", "1"], tmp_path / "out",
        script=str(tmp_path / "nan_at_step_2.py"))
    rows = metrics(tmp_path / "out")
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1]
    w1, w2, w3 = (weights(tmp_path / "out" / f"step-{s}") for s in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)


# a method defined outside the project's files, registered before train.py builds its flags
TOY_METHOD = """
import runpy, sys, torch
sys.path.insert(0, ".")  # the repo root (the working directory): scalarize and train.py's own imports
import scalarize

class AccuracyFirst(scalarize.Method):
    \"\"\"Toy reward-level method: all weight on the first objective, raised each step by its covariance.\"\"\"
    name, clipped, needs_statistic = "accuracy_first", False, "cov"
    HELP = {"boost": "step on the first weight"}
    LOGGED = {"weight": "weights"}
    _state = ("weights",)

    def __init__(self, num_objectives, boost=0.5):
        super().__init__(num_objectives)
        self.boost, self.weights = boost, torch.eye(num_objectives, dtype=torch.float64)[0]

    def scalarize(self, rewards):
        return rewards @ self.weights.to(rewards)

    def update(self, statistic, objective_means):
        self.weights = self.weights + self.boost * torch.eye(self.K, dtype=torch.float64)[0] * float(statistic[0] > 0)


def equal_norm_coeffs(gram):
    return 1 / gram.diagonal().clamp(min=1e-12).sqrt() / gram.shape[0]

class EqualNorm(scalarize.Method):
    name, level = "equal_norm", "gradient"

    def _solve(self, gram):
        return equal_norm_coeffs(gram)

scalarize.METHODS.update({AccuracyFirst.name: AccuracyFirst, EqualNorm.name: EqualNorm})
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.parametrize("method", ["accuracy_first", "equal_norm"])
def test_a_method_registered_from_outside_trains(tiny_model, tmp_path, method):
    """Adding a method is one class (and, gradient level, its solver) registered from outside the project's files,
    as the README shows: it gets its flags and trains 2 steps."""
    (tmp_path / "toy.py").write_text(TOY_METHOD)
    flags = ["--accuracy-first-boost", "2"] if method == "accuracy_first" else []
    run(["--model", tiny_model, *TINY, "--steps", "2", "--method", method, *flags], tmp_path / "out",
        script=str(tmp_path / "toy.py"))
    rows = metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2] and all("cov/accuracy" in r for r in rows)
    if method == "accuracy_first":
        assert rows[0]["weight/conciseness"] == 0 and rows[0]["weight/accuracy"] in (1.0, 3.0)
        assert all("score" in r for r in rows)
    else:  # c_k |g_k| = 1/K for every objective
        assert all(r["coef/accuracy"] > 0 and r["coef/clarity"] > 0 for r in rows)


def test_math500_dry_run_shows_the_paper_defaults(tmp_path):
    """--task math500 --dry-run resolves the paper's shared settings and each method's own deviations, and exits 0
    without a model, tokenizer or data (the README's table of math500 defaults is generated this way)."""
    methods = ["ctwa", "dynamic", "linear", "mgda", "famo", "lagrangian", "gradnorm", "smooth_tchebycheff"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {m: subprocess.Popen([sys.executable, "train.py", "--task", "math500", "--method", m, "--dry-run",
                                  "--out-dir", str(tmp_path / m)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
             for m in methods}
    config = {}
    for m, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, m
        config[m] = c = json.loads(out)
        assert (c["lr"], c["prompts_per_step"], c["group_size"], c["max_prompt_tokens"], c["max_new_tokens"],
                c["mini_batches"], c["steps"], c["adv"], c["kl_type"]) == (1e-6, 32, 16, 1024, 1024, 2, 810,
                                                                         "reinforce_pp", "k3"), m
        assert c["lr_schedule"] == ("polynomial" if m == "dynamic" else "constant"), m
        assert c["kl_coef"] == (0.0 if m in ("mgda", "famo", "lagrangian", "gradnorm") else 0.001), m
        clips = (c["clip_low"], c["clip_high"], c["clip_c"])
        assert clips == ((-1, -1, -1) if m in ("ctwa", "dynamic", "linear") else (0.2, 0.2, 3.0)), m
        assert not os.path.exists(tmp_path / m)  # nothing written
    # each method's own values (App. F, else its official script)
    c = config["ctwa"]
    assert (c["ctwa_init_weights"], c["ctwa_cov_targets"], c["ctwa_lambda_lr"], c["ctwa_ema_tau"]) == \
        ([0.333, 0.333, 0.334], [0.15, 0.08, 0.08], 0.05, 0.1)
    assert config["dynamic"]["dynamic_target_layers"] == list(range(10, 26))
    assert (config["gradnorm"]["gradnorm_alpha"], config["gradnorm"]["gradnorm_lr"]) == (1.5, 0.025)
    c = config["lagrangian"]
    assert (c["lagrangian_constraints"], c["lagrangian_dual_lr"]) == ([0.9, 0.9], 0.01)
    c = config["smooth_tchebycheff"]
    assert (c["smooth_tchebycheff_omd_lr"], c["smooth_tchebycheff_init"]) == (0.3, "preference")
    arith = json.loads(subprocess.run([sys.executable, "train.py", "--method", "dynamic", "--dry-run"], cwd=ROOT,
                                      env=env, capture_output=True, text=True, timeout=120).stdout)
    assert arith["dynamic_target_layers"] is None and arith["lr_schedule"] == "constant"  # arith: every layer
