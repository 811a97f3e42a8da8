"""The README's table of --task math500 defaults, generated from `train.py --dry-run` for every method (no model, no
data, no network): the paper's shared settings and each method's own values (App. F, else its official script).

    python results/math500_defaults.py > results/math500_defaults.md
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import ctwa  # noqa: E402  (after the path above)
import scalarize  # noqa: E402

METHODS = {**scalarize.METHODS, "ctwa": ctwa.CTWA}


def dry_run(method):
    out = subprocess.run([sys.executable, "train.py", "--task", "math500", "--method", method, "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def show(v):
    if isinstance(v, list) and len(v) > 3 and v == list(range(v[0], v[-1] + 1)):
        return f"{v[0]}..{v[-1]}"
    return "off" if v == -1 else "-" if v is None else str(v).replace(" ", "")


rows = []
for name, cls in METHODS.items():
    c = dry_run(name)
    clip = "off" if c["clip_low"] < 0 else f"{c['clip_low']}/{c['clip_high']}/{c['clip_c']}"
    own = ", ".join(f"{hp} {show(c[f'{name}_{hp}'])}" for hp in scalarize.hyperparameters(cls))
    rows.append([name, cls.level, c["adv"], f"{c['lr']:g} {c['lr_schedule']}", f"{c['prompts_per_step']} x "
                 f"{c['group_size']}", f"{c['max_prompt_tokens']} + {c['max_new_tokens']}", str(c["mini_batches"]),
                 str(c["steps"]), f"{c['kl_coef']:g} {c['kl_type']}" if c["kl_coef"] else "off", clip, own])
head = ["method", "level", "advantage", "lr", "prompts x G", "tokens", "updates/batch", "steps", "KL", "clip ε/ε/c",
        "its hyperparameters (- = its class default: uniform weights, running-max ideal point, ...)"]
print("\n".join("| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head), *rows]))
