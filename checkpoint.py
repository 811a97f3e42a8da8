"""A training run's folder: HF-format checkpoints with the state to resume exactly, the metrics log, and the rules
that keep a run from being lost or mixed with another.

    out/config.json         the run's resolved flags (train.py writes it), with "resumed": the steps it resumed from
    out/metrics.jsonl       one JSON object per logged step
    out/step-N/             config.json, model.safetensors, tokenizer files: a model that model.py and HF load,
                            plus optimizer.safetensors and trainer_state.json (step, method and scorer state)
    out/.lock               the pid and host of the live run using the folder

No pickle anywhere: tensors go to safetensors, everything else to JSON. A checkpoint is written to a temporary folder
and renamed into place, so a crash leaves the old checkpoint or the new one, never half of one. Under DDP/FSDP every
rank calls save() and load() (gathering a full state dict is collective); only the master writes.

A folder that holds a run is never written into by accident: a new run refuses it unless told to --resume it (the
saved configuration must then match, flag by flag, but for the SAFE_TO_CHANGE ones) or to --overwrite it (the old
run is moved aside, not deleted). A lock refuses a second live run on the same folder and is taken over once its
holder is gone. Resume takes the newest checkpoint that loads and is finite, saying why it skipped any newer one.
"""
import atexit
import datetime
import json
import os
import shutil
import socket

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_optimizer_state_dict)

from model import Transformer


# flags a resumed run may change: how long it runs and what it logs, never what it trains
SAFE_TO_CHANGE = {"steps", "eval_interval", "checkpoint_interval", "cov_interval", "law_interval", "wandb", "device",
                  "resume", "overwrite", "dry_run", "argv", "model_path", "world_size", "resumed"}


def claim(out_dir: str, resume: bool, overwrite: bool) -> str:
    """Make out_dir this run's (master only): refuse a folder holding another run unless resume or overwrite, take
    the lock, and return what was done, in one line (or "")."""
    said = ""
    holds_run = any(os.path.exists(os.path.join(out_dir, f)) for f in ("config.json", "metrics.jsonl")) or \
        bool(steps_saved(out_dir))
    if holds_run and not (resume or overwrite):
        raise SystemExit(f"{out_dir} holds a run ({len(steps_saved(out_dir))} checkpoints): pass --resume to continue "
                         "it, --overwrite to replace it, or another --out-dir")
    if resume and overwrite:
        raise SystemExit("--resume continues the run in --out-dir and --overwrite replaces it: pass one of them")
    lock = os.path.join(out_dir, ".lock")
    if os.path.isfile(lock):
        with open(lock) as f:
            try:
                holder = json.load(f)
            except json.JSONDecodeError:
                holder = {}
        if _alive(holder):
            raise SystemExit(f"{out_dir} is in use by a live run (pid {holder['pid']} on {holder['host']}); wait for "
                             f"it, or pass another --out-dir")
        said = f"took over the stale lock of pid {holder.get('pid')} on {holder.get('host')}; "
    if holds_run and overwrite:
        aside = f"{out_dir.rstrip(os.sep)}.replaced-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        os.replace(out_dir, aside)
        said += f"moved the old run in {out_dir} to {aside}"
    os.makedirs(out_dir, exist_ok=True)
    with open(lock, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    atexit.register(lambda: os.path.isfile(lock) and os.remove(lock))
    return said.rstrip("; ")


def open_run(out_dir: str, resume: bool, overwrite: bool, master: bool, barrier=None):
    """A training script's run folder: rank 0 claims it (the others wait at `barrier`, when given); with resume, the
    newest checkpoint that loads, else None. Says what it did, or exits with one line."""
    if master and (said := claim(out_dir, resume, overwrite)):
        print(said)
    if barrier is not None:
        barrier()
    if not resume:
        return None
    path, skipped = loadable(out_dir)
    if master and skipped:
        print(f"--resume: skipped {', '.join(skipped)}")
    if path is None:
        raise SystemExit(f"--resume: no checkpoint in {out_dir} that loads" + (": every one is damaged" if skipped
                                                                                else ""))
    return path


def _alive(holder: dict) -> bool:
    """Whether a lock's holder still runs: a live pid on this host; another host's lock is trusted."""
    if not holder.get("pid"):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_resume(out_dir: str, config: dict):
    """Refuse to resume with another configuration: one line naming every differing flag and its two values."""
    with open(os.path.join(out_dir, "config.json")) as f:
        saved = json.load(f)
    keys = (set(saved) | set(config)) - SAFE_TO_CHANGE
    changed = [f"--{k.replace('_', '-')} {saved.get(k)} -> {config.get(k)}" for k in sorted(keys)
               if saved.get(k) != config.get(k)]
    if changed:
        raise SystemExit(f"--resume: {out_dir} was trained with other settings ({'; '.join(changed)}): pass the same "
                         "flags, or start a new run with --overwrite or another --out-dir")
    return saved.get("resumed", [])


def loadable(out_dir: str):
    """The newest checkpoint that reads and holds only finite numbers, as (path, what was skipped and why); None if
    there is none."""
    skipped = []
    for step in reversed(steps_saved(out_dir)):
        path = os.path.join(out_dir, f"step-{step}")
        try:
            with open(os.path.join(path, "trainer_state.json")) as f:
                json.load(f)
            for name in ("model.safetensors", "optimizer.safetensors"):
                bad = [k for k, v in load_file(os.path.join(path, name)).items()
                       if v.is_floating_point() and not v.isfinite().all()]
                if bad:
                    raise ValueError(f"{name} holds NaN or inf in {bad[0]}")
        except (OSError, ValueError, SafetensorError) as e:  # JSONDecodeError is a ValueError
            skipped.append(f"step-{step} ({type(e).__name__}: {e})")
            continue
        return path, skipped
    return None, skipped


def steps_saved(out_dir: str) -> list[int]:
    """The steps of the step-N checkpoints in out_dir, oldest first."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    return sorted(int(d[5:]) for d in names if d.startswith("step-") and d[5:].isdigit())


def save(out_dir, step, model, optimizer, config, tokenizer, model_path, state: dict, master: bool):
    """Write out_dir/step-<step>: the model (config `config`, HF format), tokenizer, generation config of
    model_path, optimizer state, and `state` (JSON) beside the step and the optimizer's param groups."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
    if not master:
        return
    final, tmp = os.path.join(out_dir, f"step-{step}"), os.path.join(out_dir, f".tmp-step-{step}")
    shutil.rmtree(tmp, ignore_errors=True)
    cpu_model = Transformer(config)
    cpu_model.load_state_dict({k.removeprefix("module."): v for k, v in model_sd.items()}, strict=False)
    if config.tie_word_embeddings:
        cpu_model.lm_head.weight = cpu_model.model.embed_tokens.weight
    cpu_model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if os.path.isfile(os.path.join(model_path, "generation_config.json")):
        shutil.copy(os.path.join(model_path, "generation_config.json"), tmp)
    tensors = {f"{fqn}/{k}": v.contiguous() for fqn, st in optim_sd["state"].items() for k, v in st.items()}
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
        json.dump({"step": step, **state, "param_groups": optim_sd["param_groups"]}, f, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # atomic: a crash leaves either the old or the new checkpoint, never half of one


def load(path, model, optimizer) -> dict:
    """Load the optimizer state of checkpoint `path` into `optimizer` (the weights come with from_pretrained) and
    return its trainer state: step, method, scorer, ..."""
    with open(os.path.join(path, "trainer_state.json")) as f:
        state = json.load(f)
    state_tensors = {}
    for key, v in load_file(os.path.join(path, "optimizer.safetensors")).items():
        fqn, k = key.rsplit("/", 1)
        state_tensors.setdefault(fqn, {})[k] = v
    set_optimizer_state_dict(model, optimizer, {"state": state_tensors, "param_groups": state["param_groups"]},
                             options=StateDictOptions(full_state_dict=True))
    return state


class MetricsLog:
    """out_dir/metrics.jsonl. A fresh run starts it; a resumed one keeps the lines up to its checkpoint's step (a
    killed run may have logged steps past its last checkpoint: they are trained again) and drops a half-written last
    line (a kill during a write), saying so."""

    def __init__(self, out_dir: str, resume_step: int | None):
        self.path, self.said = os.path.join(out_dir, "metrics.jsonl"), ""
        if resume_step is not None and os.path.isfile(self.path):
            kept = []
            with open(self.path) as f:
                for i, line in enumerate(f):
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        self.said = f"dropped line {i + 1} of {self.path}, half-written when the run was killed"
                        break
                    if row["step"] <= resume_step:
                        kept.append(line)
            with open(self.path, "w") as f:
                f.writelines(kept)

    def write(self, record: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
