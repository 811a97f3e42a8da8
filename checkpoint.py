"""A training run's folder: HF-format checkpoints with the state to resume exactly, and the metrics log.

    out/config.json         the run's resolved flags (train.py writes it)
    out/metrics.jsonl       one JSON object per logged step
    out/step-N/             config.json, model.safetensors, tokenizer files: a model that model.py and HF load,
                            plus optimizer.safetensors and trainer_state.json (step, method and scorer state)

No pickle anywhere: tensors go to safetensors, everything else to JSON. A checkpoint is written to a temporary folder
and renamed into place, so a crash leaves the old checkpoint or the new one, never half of one. Under DDP/FSDP every
rank calls save() and load() (gathering a full state dict is collective); only the master writes.
"""
import json
import os
import shutil

from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_optimizer_state_dict)

from model import Transformer


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
    """out_dir/metrics.jsonl. A fresh run starts it empty; a resumed one keeps the lines up to its checkpoint's step
    (a killed run may have logged steps past its last checkpoint: they are trained again)."""

    def __init__(self, out_dir: str, resume_step: int | None):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        if resume_step is not None and os.path.isfile(self.path):
            with open(self.path) as f:
                kept = [line for line in f if json.loads(line)["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(kept)
        elif resume_step is None and os.path.isfile(self.path):
            os.remove(self.path)

    def write(self, record: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
