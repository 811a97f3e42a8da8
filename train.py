"""Multi-objective RL fine-tuning of a language model: one loop for every scalarizer and for CTWA.

    python train.py                                        # embedded arith task, CTWA, CPU, nothing downloaded
    python train.py --method linear --seed 1               # any name in scalarize.METHODS, or ctwa
    torchrun --nproc_per_node=2 train.py                   # DDP (gloo on CPU, nccl on GPU); add --fsdp for FSDP2
    torchrun --nproc_per_node=4 train.py --task math500 --model Qwen/Qwen2.5-1.5B --data-path data/math500

One step, as data flows (DESIGN.md): sample -> score -> method signal -> advantages -> update -> statistic ->
method update -> log. Each rank samples G completions for its prompts (complete groups stay on one rank); every
objective scores every completion; the rewards of all ranks are gathered, so the method (scalarizer, advantage
combiner or gradient aggregator) and the advantage estimator run on the same global batch on every rank and all
method state stays identical; the clipped policy update takes a token-mean over the global mini-batch, so the result
does not depend on the number of ranks; a forward under the updated policy gives the clipped advantage weight, whose
per-prompt covariance with each reward is CTWA's signal and is logged for every method. What a method needs from the
loop (Gram matrix, losses after the step, the statistic, clipping) it declares itself (scalarize.Method).

Randomness: the sampling of prompt p at step s uses a generator seeded by (seed, s, p), and the data order by
(seed, epoch); so a run is reproduced exactly by any number of ranks and by a resumed run (no RNG state to save).
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

import arith
import checkpoint
import ctwa
import loss
import rollout
import scalarize
import tasks
from actor import Actor, all_sum, gather
from model import Transformer

METHODS = {**scalarize.METHODS, "ctwa": ctwa.CTWA}
# Defaults per task; a flag left at None takes its task's value. math500 = the paper's run (spec §10).
# arith's CTWA targets and step were chosen on the validation split (results/selection/, results/choose.py): its
# rewards covary more strongly with the advantage than the paper's (a tiny model, 5 styles), and with the paper's
# 0.15 the accuracy covariance (~0.2) never falls below target, so CTWA would be linear scalarization (README).
# remove_padding is off for arith only because results/ was made without it: it changes float summation order, which
# moves a 60-step run like another seed would; turn it on there when results/ is next regenerated.
TASK_DEFAULTS = {
    "arith": dict(steps=60, prompts_per_step=16, group_size=8, lr=1e-4, lr_schedule="constant",
                  adv="reinforce_pp", kl_coef=0.0, max_prompt_tokens=64, max_new_tokens=40, micro_batch=64,
                  mini_batches=1, eval_interval=10, eval_prompts=None, checkpoint_interval=20, law_interval=1,
                  ctwa_cov_targets=[0.4, 0.08, 0.08], ctwa_lambda_lr=0.5, remove_padding=False),
    "math500": dict(steps=810, prompts_per_step=32, group_size=16, lr=1e-6, lr_schedule="constant",
                    adv="reinforce_pp", kl_coef=0.001, max_prompt_tokens=1024, max_new_tokens=1024, micro_batch=16,
                    mini_batches=2, eval_interval=5, eval_prompts=100, checkpoint_interval=100, law_interval=0,
                    remove_padding=True),
}

# ----------------------------------------------------------------------------- flags
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
parser.add_argument("--method", default="ctwa", choices=sorted(METHODS), help="scalarizer, or ctwa")
parser.add_argument("--task", default="arith", choices=sorted(TASK_DEFAULTS), help="prompt set and objectives")
parser.add_argument("--model", default=None, help="HF folder, hub id, or a shipped arith base model "
                    f"({', '.join(arith.BASE_MODELS)}; default {arith.BASE_MODELS[0]} on arith)")
parser.add_argument("--data-path", default=None, help="math500: folder with {train,test}.parquet or .jsonl")
parser.add_argument("--out-dir", default="out", help="checkpoints, metrics.jsonl and config.json go here")
parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out-dir")
parser.add_argument("--overwrite", action="store_true", help="replace the run in --out-dir (moved aside, not deleted)")
parser.add_argument("--seed", type=int, default=0, help="seed for data order and sampling")
# --- RL
parser.add_argument("--adv", default=None, choices=loss.ESTIMATORS, help="advantage estimator")
parser.add_argument("--grpo-mean-only", action="store_true", help="GRPO without std scaling (Dr.GRPO)")
parser.add_argument("--clip-low", type=float, default=None, help="PPO ε_low; -1 = off")
parser.add_argument("--clip-high", type=float, default=None, help="PPO ε_high; -1 = off (default as --clip-low)")
parser.add_argument("--clip-c", type=float, default=None, help="dual-clip constant c > 1; -1 = off")
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
parser.add_argument("--eval-interval", type=int, default=None, help="greedy eval every N steps (0 = off)")
parser.add_argument("--eval-prompts", type=int, default=None, help="prompts per evaluation (default: the whole split)")
parser.add_argument("--eval-split", default="test", choices=["test", "val"], help="evaluate on the test split (what "
                    "results report) or the validation split (what hyperparameters are chosen on)")
parser.add_argument("--checkpoint-interval", type=int, default=None, help="save every N steps (and at the end)")
parser.add_argument("--cov-interval", type=int, default=1, help="log Cov(reward, clipped weight) every N steps "
                    "(one extra forward; methods that use it compute it every step)")
parser.add_argument("--law-interval", type=int, default=None, help="test the covariance law every N steps (0 = off): "
                    "each objective's first-order change <-g_k, step> and its realised change on a held-out probe set")
parser.add_argument("--probe-prompts", type=int, default=32, help="held-out (val) prompts of the law's probe set")
parser.add_argument("--probe-samples", type=int, default=8, help="scored candidates per probe prompt (base model's)")
parser.add_argument("--wandb", default=None, metavar="PROJECT", help="also log to this wandb project")
# --- system
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
parser.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP under torchrun")
parser.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
parser.add_argument("--remove-padding", action=argparse.BooleanOptionalAction, default=None,
                    help="training forwards without padding: micro-batches of similar-length rows, each cut to its "
                    "longest row (task default: on for math500, off for arith)")
parser.add_argument("--compile", action="store_true", help="torch.compile the rollout's fixed-shape decode step "
                    "(CUDA graphs on a GPU); off by default until bench.py rollout measures it faster than eager "
                    "(greedy output is identical)")
parser.add_argument("--ref-offload", action="store_true", help="keep the reference model on CPU between uses")
parser.add_argument("--dry-run", action="store_true", help="print the resolved configuration (the keys of "
                    "config.json) as one JSON object and exit, loading no model, tokenizer or data")
for name, cls in METHODS.items():  # each method's hyperparameters, as --<method>-<name>
    for hp, (default, help_text, kind) in scalarize.hyperparameters(cls).items():
        flag = f"--{name}-{hp}".replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(kind, list):  # a vector: one value per objective (or per layer)
            parser.add_argument(flag, type=kind[0], nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def defaults(task, method):
    """The default of every flag left at None, for this task and method: on math500 the method's own deviations from
    the paper's shared settings (cls.PAPER_RUN: App. F, or its official script where the paper is silent), else the
    task's (TASK_DEFAULTS), else the method's class default; PPO clipping as the paper ran the method."""
    cls = METHODS[method]
    out = {f"{n}_{hp}": d for n, c in METHODS.items() for hp, (d, _, _) in scalarize.hyperparameters(c).items()}
    out.update(TASK_DEFAULTS[task], clip_low=0.2 if cls.clipped else -1, clip_c=3.0 if cls.clipped else -1)
    if task == "math500":
        own = scalarize.hyperparameters(cls)
        out.update({f"{method}_{k}" if k in own else k: v for k, v in cls.PAPER_RUN.items()})
    return out


def describe(values):
    """Method -> default, as help text: the common value, then the methods that differ."""
    show = {m: f"{v.start}..{v.stop - 1}" if isinstance(v, range) else str(v) for m, v in values.items()}
    common = max(show.values(), key=list(show.values()).count)
    return common + "".join(f", {m}: {v}" for m, v in show.items() if v != common)


for action in parser._actions:  # --help: the default of every flag resolved above, per task where it differs
    owner = [m for m in METHODS if action.dest.startswith(m + "_") and action.dest[len(m) + 1:] in
             scalarize.hyperparameters(METHODS[m])][-1:]  # a method's own hyperparameter, or a flag of every method
    if action.dest in defaults("arith", "ctwa") and action.dest != "clip_high":
        per_task = {t: describe({m: defaults(t, m)[action.dest] for m in owner or METHODS}) for t in TASK_DEFAULTS}
        action.help += " [default " + ("; ".join(f"{t}: {d}" for t, d in per_task.items())
                                       if len(set(per_task.values())) > 1 else per_task["arith"]) + "]"
args = parser.parse_args()
for key, value in defaults(args.task, args.method).items():
    if getattr(args, key) is None:
        setattr(args, key, list(value) if isinstance(value, (range, tuple)) else value)
args.clip_high = args.clip_low if args.clip_high is None else args.clip_high


def check_flags(args):
    """Every numeric flag in its range before any work: one line naming the flag, its value and what is allowed."""
    try:  # the method's own hyperparameters (vector lengths, ranges), checked by its constructor
        method = METHODS[args.method](num_objectives=len(tasks.OBJECTIVES), **method_kwargs(args))
    except ValueError as e:
        raise SystemExit(f"--method {args.method}: {e}") from None
    per_prompt = args.adv in ("grpo", "rloo") or method.needs_statistic  # needs groups of G >= 2 samples
    rules = [("lr", args.lr > 0, "> 0"), ("temperature", args.temperature > 0, "> 0 (greedy rollouts have no policy "
              "gradient)"), ("group_size", args.group_size >= (2 if per_prompt else 1), ">= 2 for group-relative "
              "advantages and per-prompt statistics" if per_prompt else ">= 1"),
             ("clip_low", args.clip_low == -1 or 0 < args.clip_low < 1, "in (0, 1), or -1 = off"),
             ("clip_high", args.clip_high == -1 or 0 < args.clip_high < 1, "in (0, 1), or -1 = off"),
             ("clip_c", args.clip_c == -1 or args.clip_c > 1, "> 1, or -1 = off"),
             ("kl_coef", args.kl_coef >= 0 and not (args.kl_coef > 0 and method.ratio_to_reference),
              ">= 0, and 0 for a method whose loss has no KL term (pama)"), ("entropy_coef", args.entropy_coef >= 0,
              ">= 0"), ("top_p", 0 < args.top_p <= 1, "in (0, 1]"), ("weight_decay", args.weight_decay >= 0, ">= 0"),
             ("grad_clip", args.grad_clip >= 0, ">= 0 (0 = off)"), ("eval_prompts", args.eval_prompts is None or
              args.eval_prompts >= 1, ">= 1"), ("probe_samples", args.probe_samples >= 2, ">= 2")]
    rules += [(k, getattr(args, k) >= 0, ">= 0") for k in ("top_k", "warmup_steps", "eval_interval", "law_interval")]
    rules += [(k, getattr(args, k) >= 1, ">= 1") for k in ("steps", "prompts_per_step", "micro_batch", "mini_batches",
              "ppo_epochs", "checkpoint_interval", "cov_interval", "max_new_tokens", "max_prompt_tokens",
              "probe_prompts")]
    for name, ok, allowed in rules:
        if not ok:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: must be {allowed}")
    if args.compile and args.fsdp:
        raise SystemExit("--compile with --fsdp: the compiled decode step does not trace FSDP's all-gather hooks; "
                         "drop one of the two (DDP or one process compiles)")
    if args.fsdp and "RANK" not in os.environ:
        raise SystemExit("--fsdp shards over torchrun's processes: run torchrun --nproc_per_node=N train.py --fsdp")


def method_kwargs(args):
    return {hp: getattr(args, f"{args.method}_{hp}") for hp in scalarize.hyperparameters(METHODS[args.method])}


check_flags(args)
eps_low, eps_high, clip_c = (None if v < 0 else v for v in (args.clip_low, args.clip_high, args.clip_c))
world = int(os.environ.get("WORLD_SIZE", 1))
if args.dry_run:  # what config.json would hold; a hub id stays a name (resolving it would download)
    model = arith.base_model(args.model or arith.BASE_MODELS[0]) if args.task == "arith" and (
        args.model is None or args.model in arith.BASE_MODELS) else args.model
    print(json.dumps({**vars(args), "objectives": list(tasks.OBJECTIVES), "world_size": world, "model_path": model,
                      "argv": sys.argv[1:]}))
    sys.exit(0)

# ----------------------------------------------------------------------------- distributed init
ddp = int(os.environ.get("RANK", -1)) != -1
if ddp:
    rank = int(os.environ["RANK"])
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



# ----------------------------------------------------------------------------- model, tokenizer, data
def resolve_model(name):
    if name is None or name in arith.BASE_MODELS:
        if args.task != "arith":
            raise SystemExit(f"--task {args.task} needs --model: an HF folder or a hub id like Qwen/Qwen2.5-1.5B")
        return arith.base_model(name or arith.BASE_MODELS[0])
    if os.path.isdir(name):
        return name
    if os.path.isabs(name) or name.startswith(".") or name.count("/") > 1:  # a path, not a hub id "org/name"
        raise SystemExit(f"--model {name!r}: no such folder; pass an HF-format folder or a hub id like "
                         "Qwen/Qwen2.5-1.5B")
    try:  # a hub id: download config, tokenizer and safetensors weights (needs network)
        from huggingface_hub import snapshot_download
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"])
    except Exception as e:
        raise SystemExit(f"--model {name!r} is not a local folder and could not be downloaded ({e}); "
                         "pass an HF-format folder with config.json and model.safetensors") from e


def load_split(split, num_prompts=None):
    if args.task == "arith":
        return arith.load_task(split, tokenizer, num_prompts=num_prompts)
    return tasks.load_math500(split, tokenizer, data_path=args.data_path, num_prompts=num_prompts)


# the run folder first: a refused --out-dir or --resume costs nothing (checkpoint.py: open_run, check_resume)
out_dir = args.out_dir
config = {**vars(args), "objectives": list(tasks.OBJECTIVES), "world_size": world, "argv": sys.argv[1:]}
resume_dir = checkpoint.open_run(out_dir, args.resume, args.overwrite, master, dist.barrier if ddp else None)
if resume_dir:
    config["resumed"] = checkpoint.check_resume(out_dir, config) + [int(resume_dir.rsplit("-", 1)[1])]
try:  # a bad model folder or data file: the loaders name the file and the fix, in one line
    model_path = resolve_model(args.model) if master else None  # rank 0 downloads (or finds) it first
    if ddp:
        dist.barrier()
    model_path = model_path or resolve_model(args.model)
    policy = Transformer.from_pretrained(resume_dir or model_path).to(device)  # fp32 master weights
    tokenizer = tasks.load_tokenizer(model_path)
    eos_ids = tasks.eos_ids(model_path, tokenizer)
    train_set, eval_set = load_split("train"), load_split(args.eval_split, args.eval_prompts)
except (OSError, ValueError) as e:  # OSError: FileNotFoundError and friends; ValueError: unreadable contents
    raise SystemExit(f"{type(e).__name__}: {e}") from None
for split in (train_set, eval_set):  # drop overlong prompts, as the reference's filter_overlong_prompts
    keep = [i for i, p in enumerate(split.prompts) if len(p) <= args.max_prompt_tokens]
    if len(keep) < len(split.prompts) and master:
        print(f"{split.split}: dropped {len(split.prompts) - len(keep)} prompts longer than --max-prompt-tokens")
    split.prompts, split.answers = [split.prompts[i] for i in keep], [split.answers[i] for i in keep]
objectives = list(tasks.OBJECTIVES)
K = len(objectives)
steps_per_epoch = len(train_set.prompts) // args.prompts_per_step  # drop_last, as the reference
if steps_per_epoch == 0:
    raise SystemExit(f"{len(train_set.prompts)} training prompts < --prompts-per-step {args.prompts_per_step}")

method = METHODS[args.method](num_objectives=K, **method_kwargs(args))
method.names = objectives  # metrics keyed "weight/accuracy", ...
scorer = tasks.RewardScorer()
kl_coef = 0.0 if method.ratio_to_reference else args.kl_coef  # PAMA's Noon loss has no KL term

policy.gradient_checkpointing = args.grad_checkpointing
ref_model = None
if kl_coef > 0 or method.ratio_to_reference:  # the frozen initial policy (KL term, PAMA's ratio)
    ref_model = Transformer.from_pretrained(model_path, dtype=torch.bfloat16 if device.type == "cuda" else None)
    ref_model.requires_grad_(False).eval().to("cpu" if args.ref_offload else device)
if args.fsdp:
    from torch.distributed.fsdp import fully_shard
    for block in policy.model.layers:  # shard block by block, then the rest (embedding, norm, head) at the root
        fully_shard(block)
    fully_shard(policy)
    model = policy  # fully_shard works in place; call model(...) so its all-gather hooks fire
elif ddp:
    model = torch.nn.parallel.DistributedDataParallel(policy, device_ids=[local_rank] if device.type == "cuda"
                                                      else None)
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
actor = Actor(model, optimizer, method, temperature=args.temperature, eps_low=eps_low, eps_high=eps_high,
              clip_c=clip_c, kl_coef=kl_coef, kl_type=args.kl_type, entropy_coef=args.entropy_coef,
              micro_batch=args.micro_batch, mini_batches=args.mini_batches, ppo_epochs=args.ppo_epochs,
              grad_clip=args.grad_clip, fsdp=args.fsdp, remove_padding=args.remove_padding)


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


# ----------------------------------------------------------------------------- the pieces of a step
def step_prompts(step):
    """This rank's contiguous share of the step's prompts in an order fixed by (seed, epoch): (indices, global index
    of its first prompt)."""
    epoch, pos = divmod(step, steps_per_epoch)
    order = torch.randperm(len(train_set.prompts), generator=torch.Generator().manual_seed(args.seed + epoch))
    first = pos * args.prompts_per_step + rank * P_local
    return order[first:first + P_local].tolist(), first


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
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        batch = rollout.generate(policy, prompt_ids, args.max_new_tokens, temperature=temperature, top_p=args.top_p,
                                 top_k=args.top_k, eos_ids=eos_ids, group_size=group_size, generator=gens,
                                 pad_id=tokenizer.pad_token_id or 0, compile=args.compile)
    for m in sharded:
        m.reshard()
        m.set_reshard_after_forward(True, recurse=False)
    return batch


def decode(batch):
    return [tokenizer.decode(c, skip_special_tokens=True) for c in batch.completions]


def reference_logprobs(batch):
    """Log-probs (n, C) of the batch under the frozen reference policy, or None without one."""
    if ref_model is None:
        return None
    ref_model.to(device)
    ref_logp = rollout.rollout_logprobs(ref_model, batch, args.micro_batch, args.temperature, args.remove_padding)
    ref_model.to("cpu" if args.ref_offload else device)
    return ref_logp


@torch.no_grad()
def evaluate():
    """Greedy completions for this rank's share of the test prompts; returns global means per objective + length."""
    policy.eval()
    idx = list(range(rank, len(eval_set.prompts), world))
    sums = torch.zeros(K + 2, dtype=torch.float64)
    if idx:
        batch = sample([eval_set.prompts[i] for i in idx], -1, 0, 0.0, 1)
        lengths = batch.completion_mask.sum(1).tolist()
        r = scorer.score(decode(batch), lengths, [eval_set.answers[i] for i in idx], train=False)  # (n, K)
        sums[:K] = r.double().sum(0)
        sums[K], sums[K + 1] = sum(lengths), len(idx)
    sums = all_sum(sums.to(device)).cpu()
    result = {f"eval/{o}": (sums[k] / sums[K + 1]).item() for k, o in enumerate(objectives)}
    result["eval/response_length"] = (sums[K] / sums[K + 1]).item()
    return result


def build_probe():
    """The covariance-law probe: --probe-samples completions of the base model (not the policy, so a resumed run
    rebuilds the same set) for each of --probe-prompts held-out prompts, scored once; conciseness against their mean
    length. Returns (rollout, rewards (N, K))."""
    split = load_split("val", args.probe_prompts)
    base = Transformer.from_pretrained(model_path).to(device).eval()
    gens = [torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + i) for i in range(len(split.prompts))]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        probe = rollout.generate(base, split.prompts, args.max_new_tokens, temperature=1.0, eos_ids=eos_ids,
                                 group_size=args.probe_samples, generator=gens, pad_id=tokenizer.pad_token_id or 0)
    lengths = probe.completion_mask.sum(1).tolist()
    answers = [a for a in split.answers for _ in range(args.probe_samples)]
    return probe, tasks.score(decode(probe), lengths, answers, sum(lengths) / len(lengths)).to(device)


def probe_value():
    """Each objective's expected reward (K,) under the policy on the probe set (ctwa.probe_value)."""
    seq_logp = (actor.logprobs(probe) * probe.completion_mask).sum(1)  # (N,) sequence log-probs
    return ctwa.probe_value(seq_logp, probe_rewards, args.probe_samples)


# ----------------------------------------------------------------------------- run folder: config, log, checkpoints
start_step, skipped_steps = 0, 0
if resume_dir:
    state = checkpoint.load(resume_dir, model, optimizer)
    method.load_state_dict(state["method"])
    scorer.load_state_dict(state["scorer"])
    start_step, skipped_steps = state["step"], state["skipped_steps"]
if master:
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({**config, "model_path": model_path}, f, indent=1)
    metrics = checkpoint.MetricsLog(out_dir, start_step if resume_dir else None)
    if metrics.said:
        print(metrics.said)
wandb_run = None
if args.wandb and master:
    try:
        import wandb
    except ImportError:
        raise SystemExit("--wandb needs the wandb package: pip install wandb") from None
    wandb_run = wandb.init(project=args.wandb, config=vars(args))


def summary(r):
    """One log line: objectives, score, weights or coefficients, covariances, KL, entropy, length, time."""
    def vec(kind):
        return "/".join(f"{r[f'{kind}/{o}']:+.3f}" for o in objectives) if f"{kind}/{objectives[0]}" in r else ""

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
    metrics.write(record)
    if wandb_run:
        wandb_run.log(record, step=record["step"])


# ----------------------------------------------------------------------------- training
probe = None
if args.law_interval > 0:
    probe, probe_rewards = build_probe()
    probe_before = probe_value()
bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, disable=not master,
           dynamic_ncols=True)
if start_step == 0 and args.eval_interval > 0:
    log({"step": 0, **evaluate()})  # every rank evaluates its share; rank 0 logs
for step in bar:
    t0 = time.time()
    lr = lr_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # ---- sample: G completions for each of this rank's prompts
    prompt_idx, first = step_prompts(step)
    policy.eval()
    batch = sample([train_set.prompts[i] for i in prompt_idx], step, first, args.temperature, G)
    rollout_seconds = time.time() - t0
    lengths = batch.completion_mask.sum(1)  # (n,) tokens incl. EOS, n = P_local * G rows, prompt-major
    lengths_all = gather(lengths)  # (N,)
    own = slice(rank * len(lengths), (rank + 1) * len(lengths))  # this rank's rows of the global batch
    # ---- score: the conciseness mean sees the whole global batch before scoring it (spec §4.3)
    scorer.observe_lengths(lengths_all.tolist())
    answers = [train_set.answers[i] for i in prompt_idx for _ in range(G)]
    rewards = gather(scorer.score(decode(batch), lengths.tolist(), answers, train=False).to(device))  # (N, K)
    if not torch.isfinite(rewards).all():
        raise SystemExit("non-finite rewards: a reward function returned NaN/inf")
    # ---- method signal -> advantages, on the global batch (every rank the same)
    law = (probe is not None and (step + 1) % args.law_interval == 0) or method.needs_statistic == "grad"
    objective_adv = None  # (N, K) one advantage per objective, each from its own reward
    if method.level != "reward" or method.needs_gram or law:
        objective_adv = torch.stack([loss.advantages(rewards[:, k], args.adv, G, lengths_all, not args.grpo_mean_only)
                                     for k in range(K)], 1)
    # old log-probs: used once (one mini-batch, one epoch) the loss needs none (verl's on-policy shortcut, ratio 1), and
    # the statistic takes the sampler's, which equal a teacher-forced forward's (tests/test_rollout.py)
    old_logp = batch.logprobs if actor.on_policy else actor.logprobs(batch)  # (n, C)
    ref_logp = reference_logprobs(batch)
    record = {}
    if method.needs_gram:  # dynamic weighting: weights from the Gram of per-objective gradients before the update
        method.observe_gram(actor.gram(batch, objective_adv[own], old_logp, ref_logp), lr)
    adv = None  # (n,) gradient-level methods combine objective_adv per mini-batch instead
    if method.level == "reward":
        scores = method.scalarize(rewards)  # (N,)
        adv = loss.advantages(scores, args.adv, G, lengths_all, not args.grpo_mean_only)[own]
        record["score"] = scores.mean().item()
    elif method.level == "advantage":
        weight = None  # a method trained against pi_ref (PAMA) counts each completion's tokens in pi_ref's trust region
        if method.ratio_to_reference:
            trusted = scalarize.reference_trust_tokens(old_logp, ref_logp, batch.completion_mask, eps_high or math.inf)
            weight = gather(trusted) / lengths_all.float().mean()  # (N,)
        adv = method.combine(objective_adv, rewards, weight)[own]
    # the law's inputs before the update: the weights, and each objective's loss gradient on the batch (kept from the
    # update when it computes them anyway for its step, rather than computed twice)
    law_grads_from_update = law and actor.update_has_batch_gradients
    if law:
        before = actor.flat_parameters()
        if not law_grads_from_update:
            law_grads = actor.batch_gradients(batch, objective_adv[own], old_logp, ref_logp)[0]
    # ---- update
    followed, stats = actor.update(batch, adv, None if objective_adv is None else objective_adv[own], old_logp,
                                   ref_logp, keep_gradients=law_grads_from_update)
    if law_grads_from_update:
        law_grads = stats.pop("gradients")
    skipped_steps += stats["skipped"]
    if stats["skipped"] and master:
        tqdm.write(f"step {step + 1}: non-finite loss or gradient, update skipped ({skipped_steps} so far)")
    # ---- statistic: the clipped advantage weight under the new policy, its covariance with each reward
    stat = {}
    if method.needs_statistic or (step + 1) % args.cov_interval == 0:
        w, unclip_frac = actor.clipped_weights(batch, followed, old_logp, ref_logp)  # (n,), this rank's token share
        unclip_frac = all_sum(torch.tensor(unclip_frac * lengths.sum().item(), device=device)).item() / \
            lengths_all.sum().item()
        stat = ctwa.covariance_statistic(rewards, gather(w), G)
        record.update({f"{kind}/{o}": stat[kind][k].item() for kind in ("cov", "corr")
                       for k, o in enumerate(objectives)})
        record["unclip_frac"] = unclip_frac
    if law:  # the shared-parameter law: predicted change <-g_k, step>; realised change on the probe set
        predicted, stat["grad"] = actor.first_order_change(law_grads, before)
        record.update({f"law/{kind}/{o}": v[k].item() for kind, v in (("grad", predicted), ("cos", stat["grad"]))
                       for k, o in enumerate(objectives)})
        if probe is not None:
            probe_after = probe_value()
            record.update({f"{kind}/{o}": v[k].item() for kind, v in (("probe", probe_after),
                           ("law/probe", probe_after - probe_before)) for k, o in enumerate(objectives)})
            probe_before = probe_after
    # ---- method update (methods keep their state on the CPU)
    objective_means = rewards.mean(0)
    method.update(stat.get(method.needs_statistic), objective_means)
    # ---- log and checkpoint
    failures = int(all_sum(torch.tensor(scorer.failures, device=device)))  # every rank scores its own rows
    record = {"step": step + 1, **{f"reward/{o}": objective_means[k].item() for k, o in enumerate(objectives)},
              **record, **method.metrics(), **{k: stats[k] for k in ("entropy", "loss", "grad_norm", "kl", "clipfrac")},
              "response_length": lengths_all.float().mean().item(), "lr": lr, "skipped_steps": skipped_steps,
              "reward_failures": failures, "time/step": time.time() - t0, "time/rollout": rollout_seconds}
    if device.type == "cuda":  # this rank's peak since the last step: rollout cache, activations, optimizer states
        record["memory/peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    if args.eval_interval > 0 and ((step + 1) % args.eval_interval == 0 or step + 1 == args.steps):
        record.update(evaluate())
    log(record)
    if master:
        bar.write(summary(record))
    if (step + 1) % args.checkpoint_interval == 0 or step + 1 == args.steps:
        checkpoint.save(out_dir, step + 1, model, optimizer, policy.config, tokenizer, model_path,
                        {"method": method.state_dict(), "scorer": scorer.state_dict(), "skipped_steps": skipped_steps,
                         "args": vars(args)}, master)
if ddp:
    dist.destroy_process_group()
