"""Multi-objective RL fine-tuning of a language model: one loop for every scalarizer and for CTWA.

    python train.py                                        # embedded arith task, CTWA, CPU, nothing downloaded
    python train.py --method linear --seed 1               # any name in scalarize.METHODS, or ctwa
    torchrun --nproc_per_node=2 train.py                   # DDP (gloo on CPU, nccl on GPU); add --fsdp for FSDP2
    torchrun --nproc_per_node=4 train.py --task math500 --model Qwen/Qwen2.5-1.5B --data-path data/math500

One step, as data flows (DESIGN.md): each rank samples G completions for its prompts (complete groups stay on one
rank) -> every objective scores every completion -> rewards of all ranks are gathered, so the method (scalarizer,
advantage combiner or gradient aggregator) and the advantage estimator run on the same global batch on every rank
and all method state stays identical -> clipped policy update (token-mean over the global mini-batch, so the result
does not depend on the number of ranks) -> a forward under the updated policy gives CTWA's clipped advantage weight,
whose per-prompt covariance with each reward is logged for every method -> method state update, log, checkpoint.

Randomness: the sampling of prompt p at step s uses a generator seeded by (seed, s, p), and the data order by
(seed, epoch); so a run is reproduced exactly by any number of ranks and by a resumed run (no RNG state to save).
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import ctwa
import loss
import rollout
import scalarize
import tasks
from kernels.logprobs import token_logprobs
from model import Transformer

METHODS = {**scalarize.METHODS, "ctwa": ctwa.CTWA}
UNCLIPPED_METHODS = ("ctwa", "linear", "dynamic")  # the paper's "REINFORCE without clipping" runs (spec §10.3)
# Defaults per task; a flag left at None takes its task's value. math500 = the paper's run (spec §10).
# arith's CTWA targets and step are larger than the paper's: its rewards covary more strongly with the advantage
# (tiny model, 4 styles), and with 0.15 the accuracy covariance (~0.19) never falls below target (README, Results).
TASK_DEFAULTS = {
    "arith": dict(steps=60, prompts_per_step=16, group_size=8, lr=1e-4, lr_schedule="constant",
                  adv="reinforce_pp", kl_coef=0.0, max_prompt_tokens=64, max_new_tokens=40, micro_batch=64,
                  mini_batches=1, eval_interval=10, eval_prompts=None, checkpoint_interval=20,
                  ctwa_cov_targets=[0.3, 0.08, 0.08], ctwa_lambda_lr=0.5),
    "math500": dict(steps=810, prompts_per_step=32, group_size=16, lr=1e-6, lr_schedule="constant",
                    adv="reinforce_pp", kl_coef=0.001, max_prompt_tokens=1024, max_new_tokens=1024, micro_batch=16,
                    mini_batches=2, eval_interval=5, eval_prompts=100, checkpoint_interval=100),
}

# ----------------------------------------------------------------------------- flags
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
parser.add_argument("--method", default="ctwa", choices=sorted(METHODS), help="scalarizer, or ctwa")
parser.add_argument("--task", default="arith", choices=sorted(TASK_DEFAULTS), help="prompt set and objectives")
parser.add_argument("--model", default=None, help="HF folder or hub id (default: arith base model, built if absent)")
parser.add_argument("--data-path", default=None, help="math500: folder with {train,test}.parquet or .jsonl")
parser.add_argument("--out-dir", default="out", help="checkpoints, metrics.jsonl and config.json go here")
parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out-dir")
parser.add_argument("--seed", type=int, default=0, help="seed for data order and sampling")
# --- RL
parser.add_argument("--adv", default=None, choices=["grpo", "reinforce_pp", "rloo"], help="advantage estimator")
parser.add_argument("--grpo-mean-only", action="store_true", help="GRPO without std scaling (Dr.GRPO)")
parser.add_argument("--clip-low", type=float, default=None, help="PPO ε_low; -1 = off (default 0.2, off for "
                    + "/".join(UNCLIPPED_METHODS) + ")")
parser.add_argument("--clip-high", type=float, default=None, help="PPO ε_high; -1 = off (default as --clip-low)")
parser.add_argument("--clip-c", type=float, default=None, help="dual-clip constant c > 1; -1 = off (default 3)")
parser.add_argument("--kl-coef", type=float, default=None, help="KL penalty to the frozen reference (0 = no ref)")
parser.add_argument("--kl-type", default="k3", choices=["k1", "k2", "k3"], help="KL estimator (k3 = low_var_kl)")
parser.add_argument("--entropy-coef", type=float, default=0.0, help="entropy bonus coefficient")
parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1 = off)")
parser.add_argument("--top-k", type=int, default=0, help="top-k sampling (0 = off)")
# --- batch and optimizer
parser.add_argument("--steps", type=int, default=None, help="training steps (one rollout batch each)")
parser.add_argument("--prompts-per-step", type=int, default=None, help="prompts per step, all ranks together")
parser.add_argument("--group-size", type=int, default=None, help="G samples per prompt")
parser.add_argument("--micro-batch", type=int, default=None, help="completions per forward/backward (memory knob)")
parser.add_argument("--mini-batches", type=int, default=None, help="optimizer steps per rollout batch")
parser.add_argument("--ppo-epochs", type=int, default=1, help="passes over the rollout batch")
parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
parser.add_argument("--lr-schedule", default=None, choices=["constant", "cosine", "polynomial"], help="LR decay")
parser.add_argument("--warmup-steps", type=int, default=0, help="linear LR warm-up steps")
parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (0 = off)")
parser.add_argument("--max-prompt-tokens", type=int, default=None, help="longer prompts are dropped")
parser.add_argument("--max-new-tokens", type=int, default=None, help="completion length limit")
# --- evaluation, checkpoints, logging
parser.add_argument("--eval-interval", type=int, default=None, help="greedy test-split eval every N steps (0 = off)")
parser.add_argument("--eval-prompts", type=int, default=None, help="test prompts per evaluation")
parser.add_argument("--checkpoint-interval", type=int, default=None, help="save every N steps (and at the end)")
parser.add_argument("--cov-interval", type=int, default=1, help="log Cov(reward, clipped weight) every N steps "
                    "(one extra forward; CTWA computes it every step)")
parser.add_argument("--wandb", default=None, metavar="PROJECT", help="also log to this wandb project")
parser.add_argument("--fault-nan-step", type=int, default=-1, help="testing: make step N's loss NaN (skip path)")
# --- system
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
parser.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP under torchrun")
parser.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
parser.add_argument("--ref-offload", action="store_true", help="keep the reference model on CPU between uses")
METHOD_DEFAULTS = {}  # (method, hyperparameter) -> its paper's default; a flag left at None takes it
for name, cls in METHODS.items():  # each method's hyperparameters, as --<method>-<name>
    for hp, (default, help_text) in scalarize.hyperparameters(cls).items():
        METHOD_DEFAULTS[name, hp] = default
        flag, help_text = f"--{name}-{hp}".replace("_", "-"), f"{help_text} [default: {default}]"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif default is None or isinstance(default, (list, tuple)):  # a vector: one float per objective
            parser.add_argument(flag, type=float, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=None, help=help_text)
args = parser.parse_args()
for key, value in TASK_DEFAULTS[args.task].items():
    if getattr(args, key) is None:
        setattr(args, key, value)
for (name, hp), default in METHOD_DEFAULTS.items():
    key = f"{name}_{hp}"
    if getattr(args, key) is None:
        setattr(args, key, TASK_DEFAULTS[args.task].get(key, default))
clipped = args.method not in UNCLIPPED_METHODS  # "-1 = off" becomes None below
args.clip_low = 0.2 if args.clip_low is None and clipped else args.clip_low
args.clip_high = args.clip_low if args.clip_high is None else args.clip_high
args.clip_c = 3.0 if args.clip_c is None and clipped else args.clip_c
eps_low, eps_high, clip_c = (None if v is None or v < 0 else v for v in (args.clip_low, args.clip_high, args.clip_c))

# ----------------------------------------------------------------------------- distributed init
ddp = int(os.environ.get("RANK", -1)) != -1
if ddp:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
else:
    rank, world, local_rank = 0, 1, 0
master = rank == 0  # logs, checkpoints
device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else "cpu")
if args.prompts_per_step % world:
    raise SystemExit(f"--prompts-per-step {args.prompts_per_step} must divide by the {world} ranks")
P_local = args.prompts_per_step // world  # prompts per rank; all G samples of a prompt stay on its rank
G = args.group_size
if (P_local * G) % args.mini_batches:
    raise SystemExit(f"{P_local * G} completions per rank do not split into --mini-batches {args.mini_batches}")
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                    enabled=False)


def gather(t):
    """Concatenate a tensor (n, ...) from every rank along dim 0, in rank order (identical on all ranks)."""
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_sum(t):
    if world > 1:
        dist.all_reduce(t)
    return t


# ----------------------------------------------------------------------------- model, tokenizer, data
def resolve_model(name):
    if name is None:
        return tasks.arith_base_model()
    if os.path.isdir(name):
        return name
    if os.path.isabs(name) or name.startswith(".") or name.count("/") > 1:  # a path, not a hub id "org/name"
        raise SystemExit(f"--model {name!r}: no such folder; pass an HF-format folder or a hub id like Qwen/Qwen2.5-1.5B")
    try:  # a hub id: download config, tokenizer and safetensors weights (needs network)
        from huggingface_hub import snapshot_download
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"])
    except Exception as e:
        raise SystemExit(f"--model {name!r} is not a local folder and could not be downloaded ({e}); "
                         "pass an HF-format folder with config.json and model.safetensors") from e


out_dir = args.out_dir
resume_dir = None
if args.resume:
    steps_saved = sorted(int(d[5:]) for d in os.listdir(out_dir) if d.startswith("step-")) if os.path.isdir(
        out_dir) else []
    if not steps_saved:
        raise SystemExit(f"--resume: no step-* checkpoint in {out_dir!r}")
    resume_dir = os.path.join(out_dir, f"step-{steps_saved[-1]}")
if master:  # rank 0 builds (or finds) the arith base model before the others look for it
    model_path = resolve_model(args.model)
if ddp:
    dist.barrier()
model_path = resolve_model(args.model) if not master else model_path
tokenizer = tasks.load_tokenizer(model_path)
eos_ids = {tokenizer.eos_token_id} - {None}
if os.path.isfile(os.path.join(model_path, "generation_config.json")):  # the ids the model's generate stops at
    with open(os.path.join(model_path, "generation_config.json")) as f:
        eos = json.load(f).get("eos_token_id")
    eos_ids |= set(eos if isinstance(eos, list) else [eos]) - {None}
eos_ids = sorted(eos_ids)
train_set = tasks.load_task(args.task, "train", tokenizer, data_path=args.data_path, seed=args.seed)
test_set = tasks.load_task(args.task, "test", tokenizer, data_path=args.data_path, seed=args.seed,
                           num_prompts=args.eval_prompts)
for split in (train_set, test_set):  # drop overlong prompts, as the reference's filter_overlong_prompts
    keep = [i for i, p in enumerate(split.prompts) if len(p) <= args.max_prompt_tokens]
    if len(keep) < len(split.prompts) and master:
        print(f"{split.split}: dropped {len(split.prompts) - len(keep)} prompts longer than --max-prompt-tokens")
    split.prompts, split.answers = [split.prompts[i] for i in keep], [split.answers[i] for i in keep]
objectives = list(tasks.OBJECTIVES)
K = len(objectives)
steps_per_epoch = len(train_set.prompts) // args.prompts_per_step  # drop_last, as the reference
if steps_per_epoch == 0:
    raise SystemExit(f"{len(train_set.prompts)} training prompts < --prompts-per-step {args.prompts_per_step}")

policy = Transformer.from_pretrained(resume_dir or model_path).to(device)  # fp32 master weights
policy.gradient_checkpointing = args.grad_checkpointing
ref_model = None
if args.kl_coef > 0 or METHODS[args.method].ratio_to_reference:  # frozen initial policy (KL term, PAMA's ratio)
    ref_model = Transformer.from_pretrained(model_path, dtype=torch.bfloat16 if device.type == "cuda" else None)
    ref_model.requires_grad_(False).eval().to("cpu" if args.ref_offload else device)
if args.fsdp:
    from torch.distributed.fsdp import fully_shard
    for block in policy.model.layers:  # shard block by block, then the rest (embedding, norm, head) at the root
        fully_shard(block)
    fully_shard(policy)
    model = policy  # fully_shard works in place; call model(...) so its all-gather hooks fire
elif ddp:
    model = torch.nn.parallel.DistributedDataParallel(policy, device_ids=[local_rank] if device.type == "cuda" else None)
else:
    model = policy
params = [p for p in policy.parameters() if p.requires_grad]
if device.type == "cuda":  # warn before a long start-up ends in an out-of-memory error
    cfg, n_params = policy.config, sum(p.numel() for p in params)
    states = 16 * n_params / (world if args.fsdp else 1)  # fp32 weights, grads, two AdamW moments (bytes)
    cache = P_local * G * (args.max_prompt_tokens + args.max_new_tokens) * cfg.num_hidden_layers * 2 * \
        cfg.num_key_value_heads * cfg.head_dim * 2  # the rollout's bf16 KV cache
    need, have = states + cache + (2 * n_params if ref_model is not None else 0), torch.cuda.mem_get_info(device)[1]
    if need > 0.85 * have and master:
        print(f"warning: weights, optimizer and rollout cache alone need ~{need / 2**30:.0f} GiB of this GPU's "
              f"{have / 2**30:.0f} GiB: use more GPUs with --fsdp, or lower --prompts-per-step or --max-new-tokens")


def oom_hint(exc_type, exc, tb):
    if issubclass(exc_type, torch.cuda.OutOfMemoryError):
        print(f"out of GPU memory: lower --micro-batch (now {args.micro_batch}), add --grad-checkpointing, or use "
              "--fsdp on more GPUs", file=sys.stderr)
    sys.__excepthook__(exc_type, exc, tb)


sys.excepthook = oom_hint
optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)


def lr_at(step):
    """LR for training step `step` (0-based): linear warm-up, then constant / cosine / verl's polynomial (1.03)."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    if args.lr_schedule == "cosine":
        return args.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if args.lr_schedule == "polynomial":
        return args.lr * (1 - progress) ** 1.03
    return args.lr


cls = METHODS[args.method]
method = cls(num_objectives=K, **{hp: getattr(args, f"{args.method}_{hp}") for hp in scalarize.hyperparameters(cls)})
method.names = objectives  # metrics keyed "weight/accuracy", ...
scorer = tasks.RewardScorer()


# ----------------------------------------------------------------------------- forward helpers
def completion_logprobs(net, batch, rows, with_entropy=False):
    """Teacher-forced log-probs (n, C) of the sampled completion tokens (and entropies) for `rows` of the batch.

    The log-probs are computed inside the model's forward by `head`, from the hidden states and the LM-head
    weight in chunks (kernels/logprobs.py), so the (n, T, V) logits never exist and FSDP's all-gathered head
    weight is in scope."""
    seq, attn = batch.sequences[rows], batch.attn_mask[rows]  # (n, P+C)
    Pw = batch.prompt_width

    def head(hidden, weight):  # hidden (n, P+C-1, C); position P-1+j predicts completion token j (at P+j)
        return token_logprobs(hidden[:, Pw - 1:], weight, seq[:, Pw:], temperature=args.temperature,
                              return_entropy=with_entropy)

    with autocast:
        return net(seq[:, :-1], attn_mask=attn[:, :-1], head=head)


def local(t):
    """The local shard of an FSDP2 DTensor (the tensor itself without FSDP)."""
    return t.to_local() if hasattr(t, "to_local") else t


def chunks(n, size):
    return [torch.arange(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def forward_all(net, batch):
    """No-grad log-probs (n, C) of every row of the batch, in micro-batches."""
    return torch.cat([completion_logprobs(net, batch, r) for r in chunks(batch.sequences.size(0), args.micro_batch)])


def sample(prompt_ids, step, first_prompt_index, temperature, group_size):
    """Rollout for this rank's prompts; prompt p (global index) samples from a generator seeded by (seed, step, p)."""
    gens = [torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + (step + 1) * 100_003 + first_prompt_index
                                                       + i) for i in range(len(prompt_ids))]
    # FSDP2: gather the whole model once for the rollout, since ranks stop decoding at different steps and per-layer
    # all-gathers inside the decode loop would mismatch (and cost one all-gather per layer per token)
    sharded = [m for m in policy.modules() if hasattr(m, "unshard")]
    for m in sharded:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    with autocast:
        batch = rollout.generate(policy, prompt_ids, args.max_new_tokens, temperature=temperature, top_p=args.top_p,
                                 top_k=args.top_k, eos_ids=eos_ids, group_size=group_size, generator=gens,
                                 pad_id=tokenizer.pad_token_id or 0)
    for m in sharded:
        m.reshard()
        m.set_reshard_after_forward(True, recurse=False)
    return batch


def decode(batch):
    return [tokenizer.decode(c, skip_special_tokens=True) for c in batch.completions]


@torch.no_grad()
def evaluate():
    """Greedy completions for this rank's share of the test prompts; returns global means per objective + length."""
    policy.eval()
    idx = list(range(rank, len(test_set.prompts), world))
    sums = torch.zeros(K + 2, dtype=torch.float64)
    if idx:
        batch = sample([test_set.prompts[i] for i in idx], -1, 0, 0.0, 1)
        lengths = batch.completion_mask.sum(1).tolist()
        r = scorer.score(decode(batch), lengths, [test_set.answers[i] for i in idx], train=False)  # (n, K)
        sums[:K] = r.double().sum(0)
        sums[K], sums[K + 1] = sum(lengths), len(idx)
    sums = all_sum(sums.to(device)).cpu()
    result = {f"eval/{o}": (sums[k] / sums[K + 1]).item() for k, o in enumerate(objectives)}
    result["eval/response_length"] = (sums[K] / sums[K + 1]).item()
    return result


# ----------------------------------------------------------------------------- checkpoints (no pickle)
def save_checkpoint(step):
    """HF-format model folder + resume state, written to a temp folder and renamed into place atomically."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
    if not master:
        return
    final, tmp = os.path.join(out_dir, f"step-{step}"), os.path.join(out_dir, f".tmp-step-{step}")
    shutil.rmtree(tmp, ignore_errors=True)
    cpu_model = Transformer(policy.config)
    cpu_model.load_state_dict({k.removeprefix("module."): v for k, v in model_sd.items()}, strict=False)
    if policy.config.tie_word_embeddings:
        cpu_model.lm_head.weight = cpu_model.model.embed_tokens.weight
    cpu_model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name in ("generation_config.json",):
        if os.path.isfile(os.path.join(model_path, name)):
            shutil.copy(os.path.join(model_path, name), tmp)
    tensors = {f"{fqn}/{k}": v.contiguous() for fqn, st in optim_sd["state"].items() for k, v in st.items()}
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    state = dict(step=step, method=method.state_dict(), scorer=scorer.state_dict(),
                 param_groups=optim_sd["param_groups"], skipped_steps=skipped_steps, args=vars(args))
    with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
        json.dump(state, f, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # atomic: a crash leaves either the old or the new checkpoint, never half of one


def load_checkpoint(path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    with open(os.path.join(path, "trainer_state.json")) as f:
        state = json.load(f)
    state_tensors = {}
    for key, v in load_file(os.path.join(path, "optimizer.safetensors")).items():
        fqn, k = key.rsplit("/", 1)
        state_tensors.setdefault(fqn, {})[k] = v
    set_optimizer_state_dict(model, optimizer, {"state": state_tensors, "param_groups": state["param_groups"]},
                             options=StateDictOptions(full_state_dict=True))
    method.load_state_dict(state["method"])
    scorer.load_state_dict(state["scorer"])
    return state["step"], state["skipped_steps"]


start_step, skipped_steps = 0, 0
if resume_dir:
    start_step, skipped_steps = load_checkpoint(resume_dir)
metrics_path = os.path.join(out_dir, "metrics.jsonl")
if master:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({**vars(args), "objectives": objectives, "world_size": world, "model_path": model_path}, f,
                  indent=1)
    if resume_dir and os.path.isfile(metrics_path):  # drop lines a killed run wrote past its last checkpoint
        with open(metrics_path) as f:
            kept = [line for line in f if json.loads(line)["step"] <= start_step]
        with open(metrics_path, "w") as f:
            f.writelines(kept)
    elif not resume_dir and os.path.isfile(metrics_path):
        os.remove(metrics_path)
wandb_run = None
if args.wandb and master:
    try:
        import wandb
    except ImportError:
        raise SystemExit("--wandb needs the wandb package: pip install wandb") from None
    wandb_run = wandb.init(project=args.wandb, config=vars(args))


def summary(r):
    """One log line: objectives, score, weights or coefficients, covariances, KL, entropy, length, time."""
    vec = lambda kind: "/".join(f"{r[f'{kind}/{o}']:+.3f}" for o in objectives) if f"{kind}/{objectives[0]}" in r else ""
    weights = vec("weight") or vec("coef")
    parts = [f"step {r['step']}/{args.steps}", " ".join(f"{o[:4]} {r[f'reward/{o}']:.3f}" for o in objectives),
             f"score {r['score']:.3f}" if "score" in r else "", f"w {weights}" if weights else "",
             f"cov {vec('cov')}" if f"cov/{objectives[0]}" in r else "", f"kl {r['kl']:.4f}",
             f"ent {r['entropy']:.3f}", f"len {r['response_length']:.1f}",
             f"{r['time/step']:.1f}s (rollout {r['time/rollout']:.1f}s)"]
    if "memory/peak_gib" in r:
        parts.append(f"peak {r['memory/peak_gib']:.1f} GiB")
    if "eval/accuracy" in r:
        parts.append("eval " + " ".join(f"{o[:4]} {r[f'eval/{o}']:.3f}" for o in objectives))
    return " | ".join(p for p in parts if p)


def log(record):
    if not master:
        return
    with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if wandb_run:
        wandb_run.log(record, step=record["step"])


# ----------------------------------------------------------------------------- training
if start_step == 0 and args.eval_interval > 0:
    log({"step": 0, **evaluate()})  # every rank evaluates its share; rank 0 logs
bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, disable=not master,
           dynamic_ncols=True)
for step in bar:
    t0 = time.time()
    lr = lr_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # ---- data: this step's prompts, in an order fixed by (seed, epoch); this rank's contiguous share
    epoch, pos = divmod(step, steps_per_epoch)
    order = torch.randperm(len(train_set.prompts), generator=torch.Generator().manual_seed(args.seed + epoch))
    first = pos * args.prompts_per_step + rank * P_local
    prompt_idx = order[first:first + P_local].tolist()
    # ---- rollout: P_local prompts x G samples, rows prompt-major
    policy.eval()
    batch = sample([train_set.prompts[i] for i in prompt_idx], step, first, args.temperature, G)
    rollout_seconds = time.time() - t0
    mask = batch.completion_mask  # (n, C), n = P_local * G
    lengths = mask.sum(1)  # (n,) tokens incl. EOS
    # ---- rewards: the conciseness mean sees the whole global batch before scoring it (spec §4.3)
    lengths_all = gather(lengths)  # (N,)
    scorer.observe_lengths(lengths_all.tolist())
    answers = [train_set.answers[i] for i in prompt_idx for _ in range(G)]
    rewards_local = scorer.score(decode(batch), lengths.tolist(), answers, train=False).to(device)  # (n, K)
    rewards = gather(rewards_local)  # (N, K), identical on every rank
    if not torch.isfinite(rewards).all():
        raise SystemExit("non-finite rewards: a reward function returned NaN/inf")
    # ---- advantages (global batch, every rank the same), then this rank's rows
    C = int(lengths_all.max())  # ranks stop decoding at different steps: the widest completion of all of them
    all_mask = torch.arange(C, device=device)[None] < lengths_all[:, None]  # (N, C)

    def advantages(scores):  # (N,) -> (N,) per sequence; outcome reward, so constant over a row's tokens
        if args.adv == "grpo":
            return loss.grpo_advantages(scores, G, scale=not args.grpo_mean_only)
        if args.adv == "rloo":
            return loss.rloo_advantages(scores, G)
        token_rewards = torch.zeros(all_mask.shape, dtype=scores.dtype, device=device)  # (N, C)
        token_rewards[torch.arange(len(scores)), (lengths_all - 1).clamp(min=0)] = scores  # at the last token
        return loss.reinforce_pp_advantages(token_rewards, all_mask).sum(1) / lengths_all.clamp(min=1)

    n = mask.size(0)
    own = slice(rank * n, (rank + 1) * n)
    record = {}
    objective_adv = None  # (N, K) one advantage per objective, each from its own reward
    if method.level != "reward" or method.needs_gram:
        objective_adv = torch.stack([advantages(rewards[:, k]) for k in range(K)], 1)
    # ---- old and reference log-probs (no grad). Used once (one mini-batch, one epoch), the batch needs no old
    # log-probs in the loss (verl's on-policy shortcut: ratio = 1); CTWA's statistic then takes the sampler's, which
    # equal a teacher-forced forward's (tests/test_rollout.py), instead of one more forward pass
    on_policy = args.mini_batches == 1 and args.ppo_epochs == 1
    old_logp = batch.logprobs if on_policy else forward_all(model, batch)  # (n, C)
    ref_logp = None
    if ref_model is not None:
        ref_model.to(device)
        ref_logp = forward_all(ref_model, batch)
        ref_model.to("cpu" if args.ref_offload else device)
    kl_coef = 0.0 if method.ratio_to_reference else args.kl_coef  # PAMA's Noon loss has no KL term

    stats = dict(loss=0.0, grad_norm=0.0, kl=0.0, clipfrac=0.0, entropy=0.0, micro_steps=0)

    def surrogate(rows, adv_rows):
        """Policy loss (token-mean over `rows`) at the current parameters, with its metrics (entropy included)."""
        logp, ent = completion_logprobs(model, batch, rows, with_entropy=True)
        old = ref_logp[rows] if method.ratio_to_reference else logp.detach() if on_policy else old_logp[rows]
        return loss.policy_loss(logp, old, adv_rows, mask[rows], None if ref_logp is None else ref_logp[rows],
                                eps_low, eps_high, clip_c, kl_coef, args.kl_type, ent, args.entropy_coef)[:2]

    def accumulate(m):  # this rank's loss diagnostics, averaged over its micro-batches when logged
        stats["micro_steps"] += 1
        for key in ("kl", "clipfrac", "entropy"):
            stats[key] += m[key].item()

    def objective_grads(micro, tokens, log_stats=False):
        """Per-objective gradients (K, P_params) (this rank's FSDP shard, or all of them) and losses (K,)."""
        grads, losses = [], torch.zeros(K, device=device)
        for k in range(K):
            optimizer.zero_grad(set_to_none=True)
            for rows in micro:
                lk, m = surrogate(rows, objective_adv[own][rows, k])
                scale = mask[rows].sum() * world / tokens  # token-mean over the global mini-batch (DDP averages)
                (lk * scale).backward()
                losses[k] += lk.detach() * scale / world
                if log_stats and k == 0:
                    accumulate(m)
            grads.append(torch.cat([local(p.grad).flatten() for p in params]))
        g = torch.stack(grads)  # (K, P_params)
        gram = g.double() @ g.double().T  # (K, K); FSDP: shards' partial Grams add up to the exact one
        return g, (all_sum(gram) if args.fsdp else gram), all_sum(losses)

    if method.needs_gram:  # dynamic weighting: weights from the Gram of per-objective gradients before the update
        _, gram, _ = objective_grads(chunks(n, args.micro_batch), all_sum(mask.sum().float()))
        method.observe_gram(gram, lr)
    if method.level == "reward":
        scores = method.scalarize(rewards)  # (N,)
        adv_all = advantages(scores)
        record["score"] = scores.mean().item()
    elif method.level == "advantage":
        adv_all = method.combine(objective_adv, rewards)
    adv_local = adv_all[own] if method.level != "gradient" else None
    # ---- policy update: mini-batches x PPO epochs, token-mean over the global mini-batch
    model.train()
    updates = 0
    for _ in range(args.ppo_epochs):
        for mb in chunks(n, n // args.mini_batches):
            tokens = all_sum(mask[mb].sum().float())  # valid tokens of this mini-batch on all ranks
            micro = [mb[r] for r in chunks(len(mb), args.micro_batch)]
            total = torch.zeros((), device=device)
            if method.level == "gradient":  # d = sum_k c_k g_k from the Gram matrix (scalarize.py)
                g, gram, losses = objective_grads(micro, tokens, log_stats=True)
                coeffs = torch.as_tensor(method.coefficients(gram, losses)).to(g)  # (K,)
                flat = coeffs @ g  # (P_params,)
                offset = 0
                for p in params:
                    numel = local(p.grad).numel()
                    local(p.grad).copy_(flat[offset:offset + numel].view_as(local(p.grad)))
                    offset += numel
                total = coeffs.to(losses) @ losses
            else:
                optimizer.zero_grad(set_to_none=True)
                for rows in micro:
                    lval, m = surrogate(rows, adv_local[rows])
                    scale = mask[rows].sum() * world / tokens  # DDP averages over ranks: this makes it a sum
                    if step + 1 == args.fault_nan_step:
                        lval = lval * float("nan")
                    (lval * scale).backward()
                    total += lval.detach() * scale / world
                    accumulate(m)
                total = all_sum(total)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else math.inf)
            if not (torch.isfinite(total) and torch.isfinite(grad_norm)):  # skip: the weights stay as they are
                skipped_steps += 1
                if master:
                    tqdm.write(f"step {step + 1}: non-finite loss or gradient, update skipped ({skipped_steps} so far)")
                continue
            optimizer.step()
            updates += 1
            stats["loss"] += total.item()
            stats["grad_norm"] += grad_norm.item()
    optimizer.zero_grad(set_to_none=True)  # free the gradients: the next rollout's KV cache needs the memory
    # ---- after the update: the clipped advantage weight under the new policy and its covariance with each reward
    # (CTWA's signal; the other methods log it every --cov-interval steps, for the covariance-law figures)
    objective_means = rewards.mean(0)
    stat, losses_after = None, None
    if args.method == "ctwa" or method.needs_losses_after or (step + 1) % args.cov_interval == 0:
        new_logp = forward_all(model, batch)  # (n, C)
        old = ref_logp if method.ratio_to_reference else old_logp
        if method.level == "gradient":  # the update follows sum_k c_k A_k, so that is the advantage it weights
            adv_local = objective_adv[own] @ coeffs.to(objective_adv)
        w, unclip_frac = ctwa.completion_weights(new_logp, old, adv_local, mask, eps_low, eps_high,
                                                 args.ctwa_w_agg if args.method == "ctwa" else "mean")
        stat = ctwa.covariance_statistic(rewards, gather(w), G)
        record.update({f"cov/{o}": stat["cov_mean"][k].item() for k, o in enumerate(objectives)})
        record.update({f"corr/{o}": stat["corr_mean"][k].item() for k, o in enumerate(objectives)})
        record["unclip_frac"] = unclip_frac
        if method.needs_losses_after:  # FAMO: per-objective losses on the same batch after the step
            with torch.no_grad():
                losses_after = torch.stack([loss.policy_loss(new_logp, old, objective_adv[own][:, k], mask, ref_logp,
                                                             eps_low, eps_high, clip_c, kl_coef, args.kl_type)[0]
                                            for k in range(K)])  # (K,) token-means over this rank's rows
            tokens = mask.sum().float()
            losses_after = all_sum(losses_after * tokens) / all_sum(tokens)  # token-mean over all ranks
    method.update(None if stat is None else stat["corr_mean"] if getattr(method, "use_corr", False)
                  else stat["cov_mean"], objective_means, losses_after)  # methods keep their state on the CPU
    # ---- log
    record = {"step": step + 1, **{f"reward/{o}": objective_means[k].item() for k, o in enumerate(objectives)},
              **record, **method.metrics(), "entropy": stats["entropy"] / max(stats["micro_steps"], 1),
              "response_length": lengths_all.float().mean().item(), "loss": stats["loss"] / max(updates, 1),
              "grad_norm": stats["grad_norm"] / max(updates, 1), "kl": stats["kl"] / max(stats["micro_steps"], 1),
              "clipfrac": stats["clipfrac"] / max(stats["micro_steps"], 1), "lr": lr, "skipped_steps": skipped_steps,
              "reward_failures": scorer.failures, "time/step": time.time() - t0, "time/rollout": rollout_seconds}
    if device.type == "cuda":  # this rank's peak since the last step: rollout cache, activations, optimizer states
        record["memory/peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    if args.eval_interval > 0 and ((step + 1) % args.eval_interval == 0 or step + 1 == args.steps):
        record.update(evaluate())
    log(record)
    if master:
        bar.write(summary(record))
    if (step + 1) % args.checkpoint_interval == 0 or step + 1 == args.steps:
        save_checkpoint(step + 1)
if ddp:
    dist.destroy_process_group()
