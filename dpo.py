"""Reward-free multi-objective alignment: one DPO loss per objective on that objective's preference pairs, the K
losses combined by fixed weights or by a gradient-level method of scalarize.py (RACO's clipped CAGrad first).

    python dpo.py                                          # arith pairs, RACO, uniform weights, CPU, ~40 s
    python dpo.py --method linear --weights 0.6 0.2 0.2    # or mgda, pcgrad, cagrad, nash_mtl, famo, gradnorm
    python dpo.py --objectives accuracy conciseness --weights 0.8 0.2
    torchrun --nproc_per_node=2 dpo.py                     # DDP (gloo on CPU, nccl on GPU); add --fsdp for FSDP2
    python dpo.py --model DIR --data helpful=h.jsonl harmless=s.jsonl    # prompt, chosen, rejected: one objective each
    python dpo.py --model DIR --data pku_saferlhf.parquet  # prompt, response_0/1, better/safer_response_id: two
    python eval.py --checkpoints base_models/arith-s0 out/dpo/step-100 --task arith    # score arith checkpoints

The math. Objective k's loss is DPO's L_k = -mean log sigmoid(beta h) over its pairs (x, y+, y-), h = [log pi(y+|x)
- log ref(y+|x)] - [log pi(y-|x) - log ref(y-|x)], log-probs summed over the completion, ref the frozen initial model
(Rafailov et al. 2023; loss.dpo_loss). Each step takes B pairs of every objective. linear: the gradient of
sum_k w_k L_k. Gradient level: g_k = grad L_k, Gram G_ij = g_i . g_j (under FSDP each rank's shards give a partial Gram
and one all-reduce makes it exact), c = method(G, L), d = sum_k c_k g_k written into .grad; then gradient clipping and
AdamW. RACO (Chen et al. 2026, arXiv 2602.02495): the CAGrad dual p* around the weighted anchor g_0 = sum w_k g_k,
clipped to p~ = min(p*, w), c = w + c|g_0| p~ / |sum_k p~_k g_k|. cagrad is the same without the clip (RACO's own
comparison: its trainer with the clip off), so the two differ by the clip alone. The weights (--weights, normalised
to sum 1) are the user's preference for linear, cagrad and raco; the other methods take none.

The embedded pairs: the base model samples G completions of each arith training prompt at temperature 1, the paper's
rewards score them (conciseness against the samples' mean length), and for objective k two completions of one prompt
that differ on r_k make a pair, the better one chosen. The objectives conflict as in RL: accuracy prefers worked
answers, conciseness and clarity often prefer guesses. The pairs go to the run folder in the --data layout
(pairs-<objective>.jsonl, with answers and token lengths), their counts and label conflicts to pairs.json.

Randomness: prompt p samples from a generator seeded by (seed, p), and objective k's batch at step s comes from an
order fixed by (seed, k, epoch); so a run is the same on any number of ranks and after --resume (no RNG state saved).
"""
import argparse
import json
import os
import sys
import time

import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from tqdm import tqdm

import arith
import checkpoint
import loss
import rollout
import scalarize
import tasks
from actor import all_sum, chunks, local
from model import Transformer

METHODS = ("linear", "mgda", "pcgrad", "cagrad", "raco", "nash_mtl", "famo", "gradnorm")
# DPO losses are positive (log 2 at the start), so FAMO takes its paper's bound L* = 0 and GradNorm its paper's loss
# ratio L/L(0) (there are no rewards for its reward progress); cagrad without the official 1/(1+c^2), like raco.
DEFAULTS = {"famo_lower_bounds": [0.0], "cagrad_rescale": 0}
LAYOUTS = {"pairs": ("prompt", "chosen", "rejected"),  # one objective per file
           "safety": ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id")}  # PKU-SafeRLHF

# ----------------------------------------------------------------------------- flags
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
parser.add_argument("--method", default="raco", choices=METHODS, help="how the per-objective DPO losses combine")
parser.add_argument("--weights", type=float, nargs="+", default=None, help="preference, K floats (default uniform)")
parser.add_argument("--objectives", nargs="+", default=None, help="train on these objectives only (default: all)")
parser.add_argument("--model", default=None, help=f"HF folder or shipped arith model (default {arith.BASE_MODELS[0]})")
parser.add_argument("--data", nargs="+", default=None, metavar="[NAME=]PATH", help="JSONL/parquet preference files")
parser.add_argument("--out-dir", default="out/dpo", help="checkpoints, metrics.jsonl, config.json and pairs go here")
parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out-dir")
parser.add_argument("--overwrite", action="store_true", help="replace the run in --out-dir (moved aside, not deleted)")
parser.add_argument("--seed", type=int, default=0, help="seed for the arith samples and the batch order")
parser.add_argument("--beta", type=float, default=0.1, help="DPO beta: strength of the tie to the reference")
parser.add_argument("--loss-type", default="sigmoid", choices=["sigmoid", "ipo"], help="DPO, or IPO (TRL's)")
parser.add_argument("--prompts", type=int, default=1000, help="arith: training prompts sampled for pairs")
parser.add_argument("--group-size", type=int, default=8, help="arith: samples per prompt")
parser.add_argument("--pairs-per-prompt", type=int, default=2, help="arith: most pairs per prompt and objective")
parser.add_argument("--max-new-tokens", type=int, default=40, help="arith: sampled completion length limit")
parser.add_argument("--max-length", type=int, default=1024, help="pairs with a longer prompt + completion are dropped")
parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
parser.add_argument("--batch-size", type=int, default=32, help="pairs per objective per step, all ranks together")
parser.add_argument("--micro-batch", type=int, default=32, help="pairs per forward/backward (memory knob)")
parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (constant)")
parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (0 = off)")
parser.add_argument("--checkpoint-interval", type=int, default=50, help="save every N steps (and at the end)")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
parser.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP under torchrun")
for name in METHODS[1:]:  # each method's hyperparameters as --<method>-<name>; the preference is --weights
    for hp, (default, help_text, kind) in scalarize.hyperparameters(scalarize.METHODS[name]).items():
        if hp not in ("weights", "progress"):
            vec = isinstance(kind, list)
            parser.add_argument(f"--{name}-{hp}".replace("_", "-"), type=kind[0] if vec else kind,
                                nargs="+" if vec else None, default=DEFAULTS.get(f"{name}_{hp}", default),
                                help=help_text)
args = parser.parse_args()

# ----------------------------------------------------------------------------- distributed init
ddp = "RANK" in os.environ
rank, world, local_rank = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")) if ddp else (0, 1, 0)
if ddp:
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
master = rank == 0  # logs, checkpoints, pair files
device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else "cpu")
if args.batch_size % world or args.micro_batch < 1:
    raise SystemExit(f"--batch-size {args.batch_size} must divide by the {world} ranks (and --micro-batch be >= 1)")
B_local = args.batch_size // world  # pairs of each objective on this rank per step


# ----------------------------------------------------------------------------- preference data
def read_rows(path):
    """[(row number, dict)] of a .parquet or JSONL file; rows count from 1 (a JSONL row is its line)."""
    if not os.path.isfile(path):
        raise SystemExit(f"--data {path}: no such file")
    if path.endswith(".parquet"):
        return list(enumerate(pq.read_table(path).to_pylist(), 1))
    with open(path, encoding="utf-8") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    rows = []
    for n, line in lines:
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path} row {n}: not valid JSON ({e.msg})") from None
        if not isinstance(rows[-1][1], dict):
            raise SystemExit(f"{path} row {n}: not a JSON object")
    return rows


def cell(path, n, row, column, labels=False):
    """Row n's value in `column`: a non-empty string, or with labels=True a response id 0 or 1."""
    value = row.get(column)
    if not (value in (0, 1) and not isinstance(value, bool) if labels else isinstance(value, str) and value.strip()):
        want = "0 or 1" if labels else "a non-empty string"
        raise SystemExit(f"{path} row {n}, column {column!r}: " +
                         (f"expected {want}, got {value!r:.80}" if column in row else "missing"))
    return int(value) if labels else value


def load_preferences(specs):
    """--data [NAME=]PATH ... -> {objective: [(prompt, chosen, rejected)]} texts. A prompt/chosen/rejected file is
    one objective (NAME, default the file's stem); a PKU-SafeRLHF file is two, helpful and harmless."""
    out = {}
    for spec in specs:
        name, path = spec.split("=", 1) if "=" in spec else (os.path.splitext(os.path.basename(spec))[0], spec)
        rows = read_rows(path)
        if not rows:
            raise SystemExit(f"{path}: empty, no preference rows")
        missing = {k: [c for c in cols if c not in rows[0][1]] for k, cols in LAYOUTS.items()}
        layout = min(missing, key=lambda k: len(missing[k]))  # the layout the file is closest to
        if missing[layout]:
            raise SystemExit(f"{path} row {rows[0][0]}: no column {', '.join(map(repr, missing[layout]))}; a "
                             f"preference file has {', '.join(LAYOUTS['pairs'])}, or {', '.join(LAYOUTS['safety'])}")
        names = [name] if layout == "pairs" else ["helpful", "harmless"]
        if set(names) & set(out):
            raise SystemExit(f"{path}: objective {sorted(set(names) & set(out))[0]!r} is given twice in --data")
        for n, row in rows:
            prompt = cell(path, n, row, "prompt")
            if layout == "pairs":
                triples = [(prompt, cell(path, n, row, "chosen"), cell(path, n, row, "rejected"))]
            else:
                response = [cell(path, n, row, "response_0"), cell(path, n, row, "response_1")]
                better, safer = (cell(path, n, row, c, labels=True) for c in LAYOUTS["safety"][3:])
                triples = [(prompt, response[i], response[1 - i]) for i in (better, safer)]
            for o, triple in zip(names, triples):
                out.setdefault(o, []).append(triple)
        if layout == "safety" and master:
            flips = sum(h[1] != s[1] for h, s in zip(out["helpful"], out["harmless"])) / len(rows)
            print(f"{path}: {len(rows)} rows; the helpful and harmless labels disagree on {flips:.1%} of them")
    return out


def arith_pairs():
    """The embedded pairs (module docstring) as text triples; writes them and their statistics to the run folder."""
    task = arith.load_task("train", tokenizer, num_prompts=args.prompts)
    P, G = len(task.prompts), args.group_size
    gens = [torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + p) for p in range(P)]
    ro = rollout.generate(ref_model, task.prompts, args.max_new_tokens, temperature=1.0, eos_ids=eos_ids, group_size=G,
                          generator=gens, pad_id=pad_id)
    texts = tokenizer.batch_decode(ro.completions, skip_special_tokens=True)
    lengths = [len(c) for c in ro.completions]  # tokens incl. EOS, as training counts them
    threshold = sum(lengths) / len(lengths)
    answers = [a for a in task.answers for _ in range(G)]
    rewards = tasks.score(texts, lengths, answers, threshold)  # (P * G, 3) every objective, for the conflict counts
    gen, rows = torch.Generator().manual_seed(args.seed), {o: [] for o in objectives}  # (chosen row, rejected row)
    for p in range(P):
        for o in objectives:
            r = rewards[p * G:(p + 1) * G, tasks.OBJECTIVES.index(o)]  # (G,)
            best, rest = (p * G + torch.nonzero(m).flatten() for m in (r == r.max(), r < r.max()))
            best, rest = (x[torch.randperm(len(x), generator=gen)].tolist() for x in (best, rest))
            rows[o] += list(zip(best, rest))[:args.pairs_per_prompt]
    stats = dict(prompts=P, group_size=G, length_threshold=threshold, pairs={o: len(rows[o]) for o in objectives},
                 conflicts={}, agreements={})
    for o in objectives:  # conflicts[k][j]: the share of k's pairs that objective j orders the other way
        diff = rewards[[w for w, _ in rows[o]]] - rewards[[b for _, b in rows[o]]]  # (n, 3) chosen minus rejected
        for kind, side in (("conflicts", diff < 0), ("agreements", diff > 0)):
            stats[kind][o] = {j: side[:, q].double().mean().item() for q, j in enumerate(tasks.OBJECTIVES) if j != o}
    if master:
        for o in objectives:
            with open(os.path.join(args.out_dir, f"pairs-{o}.jsonl"), "w") as f:
                f.writelines(json.dumps(dict(prompt=task.texts[w // G], chosen=texts[w], rejected=texts[b],
                                             answer=answers[w], chosen_length=lengths[w], rejected_length=lengths[b]))
                             + "\n" for w, b in rows[o])
        with open(os.path.join(args.out_dir, "pairs.json"), "w") as f:
            json.dump(stats, f, indent=1)
        print(f"arith pairs from {P} prompts x {G} samples (mean length {threshold:.1f} tokens): " +
              ", ".join(f"{o} {n}" for o, n in stats["pairs"].items()))
        for o, c in stats["conflicts"].items():
            print(f"  {o} pairs: " + ", ".join(f"{j} prefers the rejected {s:.0%} (the chosen "
                                               f"{stats['agreements'][o][j]:.0%})" for j, s in c.items()))
    return {o: [(task.texts[w // G], texts[w], texts[b]) for w, b in rows[o]] for o in objectives}


def encode(triples):
    """Token-id triples of text pairs: the prompt as a chat user turn (tasks.encode_prompts), each completion + EOS;
    a pair longer than --max-length (or the model's positions) is dropped."""
    prompts = tasks.encode_prompts(tokenizer, [t[0] for t in triples])
    chosen, rejected = (tokenizer([t[i] for t in triples], add_special_tokens=False)["input_ids"] for i in (1, 2))
    limit = min(args.max_length, ref_model.config.max_position_embeddings)
    return [(p, c + [eos], r + [eos]) for p, c, r in zip(prompts, chosen, rejected)
            if len(p) + max(len(c), len(r)) + 1 <= limit]


def pair_batch(triples):
    """A Rollout of n token-id pairs: rows 0..n-1 their chosen completions, n..2n-1 the rejected ones, the prompts
    left-padded to one width as rollout.completion_logprobs expects."""
    prompts = [t[0] for t in triples] * 2
    completions = [t[1] for t in triples] + [t[2] for t in triples]
    Pw, C = max(map(len, prompts)), max(map(len, completions))
    seq = torch.full((len(prompts), Pw + C), pad_id, dtype=torch.long)  # (2n, Pw + C)
    attn = torch.zeros(len(prompts), Pw + C, dtype=torch.bool)
    for r, (p, c) in enumerate(zip(prompts, completions)):
        seq[r, Pw - len(p):Pw + len(c)] = torch.tensor(p + c)
        attn[r, Pw - len(p):Pw + len(c)] = True
    return rollout.Rollout(seq.to(device), attn.to(device), Pw, attn[:, Pw:].to(device), None, completions)


# ----------------------------------------------------------------------------- run folder, objectives, method
if args.data and args.model is None:
    raise SystemExit("--data needs --model: an HF folder with config.json, model.safetensors and the tokenizer")
model_path = arith.base_model(args.model or arith.BASE_MODELS[0]) if args.model in (None, *arith.BASE_MODELS) \
    else args.model
if not os.path.isdir(model_path):
    raise SystemExit(f"--model {model_path!r}: no such folder; pass an HF-format folder")
out_dir = args.out_dir  # checkpoint.py's rules: a run's folder is never reused by accident
resume_dir = checkpoint.open_run(out_dir, args.resume, args.overwrite, master, dist.barrier if ddp else None)
data = load_preferences(args.data) if args.data else None  # {objective: text triples}; arith pairs come below
objectives = args.objectives or list(data or tasks.OBJECTIVES)
if set(objectives) - set(data or tasks.OBJECTIVES):
    raise SystemExit(f"--objectives {objectives}: choose among the data's objectives {list(data or tasks.OBJECTIVES)}")
K = len(objectives)


class WeightedCAGrad(scalarize.CAGrad):
    """CAGrad around the user's weighted anchor g_0 = sum w_k g_k: RACO's comparison (raco_coeffs without the clip)."""

    def __init__(self, num_objectives, weights, **hp):
        super().__init__(num_objectives, **hp)
        self.weights = weights

    def _solve(self, gram):
        return scalarize.cagrad_coeffs(gram, self.c, self.weights) / self.divisor


method = None  # linear: the weights are the coefficients, no Gram
try:  # a bad --weights or hyperparameter flag: its one-line message, no traceback
    weights = scalarize.vector(args.weights or 1.0, K, "weights", "--weights", nonneg=True)
    if not weights.sum() > 0:
        raise ValueError(f"--weights {args.weights} must have a positive sum")
    weights = weights / weights.sum()  # (K,) float64
    if args.method != "linear":
        hp = {h: getattr(args, f"{args.method}_{h}") for h in scalarize.hyperparameters(scalarize.METHODS[args.method])
              if h not in ("weights", "progress")}
        own = {"cagrad": {"weights": weights}, "raco": {"weights": weights}, "gradnorm": {"progress": "loss"}}
        method = (WeightedCAGrad if args.method == "cagrad" else scalarize.METHODS[args.method])(
            K, **hp, **own.get(args.method, {}))
        method.names = objectives
except ValueError as e:
    raise SystemExit(f"dpo.py: {e}") from None
config = {**vars(args), "objectives": objectives, "weights": weights.tolist(), "world_size": world,
          "model_path": model_path, "argv": sys.argv[1:]}
if resume_dir:  # the same flags as the run it continues (but for checkpoint.SAFE_TO_CHANGE), else one line
    config["resumed"] = checkpoint.check_resume(out_dir, config) + [int(resume_dir.rsplit("-", 1)[1])]

# ----------------------------------------------------------------------------- tokenizer, reference, pairs, policy
tokenizer = tasks.load_tokenizer(model_path)
eos_ids = tasks.eos_ids(model_path, tokenizer)
eos, pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else eos_ids[0], tokenizer.pad_token_id or 0
# the frozen reference: the initial model (it also samples the arith pairs)
ref_model = Transformer.from_pretrained(model_path, dtype=torch.bfloat16 if device.type == "cuda" else None)
ref_model.requires_grad_(False).eval().to(device)
data = data or arith_pairs()
pairs = [encode(data[o]) for o in objectives]  # per objective: [(prompt ids, chosen ids, rejected ids)]
for o, p in zip(objectives, pairs):
    if len(p) < args.batch_size:
        raise SystemExit(f"objective {o!r} has {len(p)} pairs within --max-length (of {len(data[o])}), fewer than "
                         f"--batch-size {args.batch_size}")

policy = Transformer.from_pretrained(resume_dir or model_path).to(device)  # fp32 master weights
model = policy
if args.fsdp:  # shard block by block, then the root (embedding, norm, head); fully_shard works in place
    from torch.distributed.fsdp import fully_shard
    for module in [*policy.model.layers, policy]:
        fully_shard(module)
elif ddp:
    model = torch.nn.parallel.DistributedDataParallel(policy, device_ids=None if device.type == "cpu" else [local_rank])
params = [p for p in policy.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)


# ----------------------------------------------------------------------------- the pieces of a step
def batch_indices(k, step):
    """This rank's pairs of objective k at `step`: a contiguous share of an order fixed by (seed, k, epoch)."""
    epoch, pos = divmod(step, len(pairs[k]) // args.batch_size)  # drop_last
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + k * 10_007 + epoch)
    first = pos * args.batch_size + rank * B_local
    return torch.randperm(len(pairs[k]), generator=gen)[first:first + B_local].tolist()


def sequence_logps(net, batch, rows):
    """log pi(y|x) (n,) of `rows` of a pair batch, summed over completion tokens (IPO: their mean, as TRL)."""
    mask = batch.completion_mask[rows]
    logp = (rollout.completion_logprobs(net, batch, rows) * mask).sum(1)
    return logp / mask.sum(1) if args.loss_type == "ipo" else logp


def pair_losses(batch, ref, rows):
    """DPO losses (n,) and diagnostics of pairs `rows` of a batch under the policy; ref (2m,) the reference's logps."""
    m = batch.sequences.size(0) // 2
    chosen, rejected = sequence_logps(model, batch, torch.cat([rows, rows + m])).chunk(2)
    return loss.dpo_loss(chosen, rejected, ref[rows], ref[rows + m], args.beta, args.loss_type)


DIAGNOSTICS = ("accuracy", "margin", "reward_chosen", "reward_rejected")  # of loss.dpo_loss, logged per objective
LOGGED = ("loss", "pair_accuracy", *DIAGNOSTICS[1:])  # metric "<kind>/<objective>": its mean over the global batch


def objective_backward(batch, ref, scale):
    """Backward of scale x an objective's mean DPO loss over the global batch, through this rank's pairs in
    micro-batches; returns this rank's sums (5,) of the losses and loss.dpo_loss's diagnostics (LOGGED)."""
    sums = torch.zeros(len(LOGGED), device=device)
    for rows in chunks(batch.sequences.size(0) // 2, args.micro_batch):
        losses, d = pair_losses(batch, ref, rows.to(device))
        (losses.sum() * scale * world / args.batch_size).backward()  # DDP averages over ranks: the global mean
        sums += torch.stack([losses.detach().sum(), *(d[key].sum() for key in DIAGNOSTICS)])
    return sums


@torch.no_grad()
def objective_losses(batches, refs):
    """The mean DPO losses (K,) of the step's batches at the current parameters (FAMO's losses after the step)."""
    return all_sum(torch.stack([sum(pair_losses(b, r, rows.to(device))[0].sum() for rows in
                                    chunks(b.sequences.size(0) // 2, args.micro_batch))
                                for b, r in zip(batches, refs)])) / args.batch_size


# ----------------------------------------------------------------------------- run folder: config, log, checkpoints
start_step, skipped_steps = 0, 0
if resume_dir:
    state = checkpoint.load(resume_dir, model, optimizer)
    if method is not None:
        method.load_state_dict(state["method"])
    start_step, skipped_steps = state["step"], state["skipped_steps"]
if master:
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    metrics = checkpoint.MetricsLog(out_dir, start_step if resume_dir else None)
    if metrics.said:
        print(metrics.said)
    print(f"objectives {'/'.join(objectives)} | pairs {'/'.join(str(len(p)) for p in pairs)} | method "
          f"{args.method} | weights {weights.numpy().round(3)}")


# ----------------------------------------------------------------------------- training
bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, disable=not master, dynamic_ncols=True)
for step in bar:
    t0 = time.time()
    batches = [pair_batch([pairs[k][i] for i in batch_indices(k, step)]) for k in range(K)]  # 2 * B_local rows each
    with torch.no_grad():  # reference log-probs (2 * B_local,) per objective
        refs = [torch.cat([sequence_logps(ref_model, b, rows.to(device))
                           for rows in chunks(b.sequences.size(0), 2 * args.micro_batch)]) for b in batches]
    model.train()
    grads, sums = [], []
    for k in range(K):  # linear accumulates sum_k w_k grad L_k; a gradient-level method keeps each g_k
        if method is not None or k == 0:
            optimizer.zero_grad(set_to_none=True)
        sums.append(objective_backward(batches[k], refs[k], 1.0 if method is not None else weights[k].item()))
        if method is not None:
            grads.append(torch.cat([local(p.grad).flatten() for p in params]))
    sums = all_sum(torch.stack(sums)) / args.batch_size  # (K, 5) global means
    coef, cosines = weights.to(sums), {}
    if method is not None:  # d = sum_k c_k g_k from the Gram (scalarize.py), into the .grad of the last backward
        g = torch.stack(grads)  # (K, P) this rank's (FSDP: its shards') gradient entries
        gram = g.double() @ g.double().T
        gram = all_sum(gram) if args.fsdp else gram
        coef = torch.as_tensor(method.coefficients(gram, sums[:, 0])).to(g)
        for p, d in zip(params, (coef @ g).split([local(p.grad).numel() for p in params])):
            local(p.grad).copy_(d.view_as(local(p.grad)))
        norms = gram.diagonal().clamp(min=1e-30).sqrt()  # a negative cosine: the objectives' gradients conflict
        cosines = {f"grad_cos/{objectives[i]}-{objectives[j]}": (gram[i, j] / norms[i] / norms[j]).item()
                   for i in range(K) for j in range(i + 1, K)}
    grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
    total = coef @ sums[:, 0]
    if torch.isfinite(total) and torch.isfinite(grad_norm):
        optimizer.step()
        if method is not None and method.needs_losses_after:  # FAMO: the same batches' losses after the step
            method.after_step(objective_losses(batches, refs))
    else:  # a non-finite loss or gradient: the weights stay as they are
        skipped_steps += 1
        if master:
            tqdm.write(f"step {step + 1}: non-finite loss or gradient, update skipped ({skipped_steps} so far)")
    optimizer.zero_grad(set_to_none=True)
    record = {"step": step + 1, **{f"{kind}/{o}": sums[k, j].item() for j, kind in enumerate(LOGGED)
                                   for k, o in enumerate(objectives)},
              **{f"coef/{o}": coef[k].item() for k, o in enumerate(objectives)}, **cosines,
              **(method.metrics() if method is not None else {}), "loss": total.item(),
              "grad_norm": grad_norm.item(), "lr": args.lr, "skipped_steps": skipped_steps,
              "time/step": time.time() - t0}
    if master:  # one line: per objective (in order) DPO loss, pair accuracy, margin, coefficient; grad norm, time
        metrics.write(record)
        fields = (("loss", "loss", ".3f"), ("acc", "pair_accuracy", ".2f"), ("margin", "margin", "+.3f"),
                  ("c", "coef", "+.3f"))
        bar.write(" | ".join([f"step {step + 1}/{args.steps}"] + [f"{label} " + "/".join(
            format(record[f"{kind}/{o}"], fmt) for o in objectives) for label, kind, fmt in fields] +
            [f"gnorm {grad_norm:.3f}", f"{record['time/step']:.2f}s"]))
    if (step + 1) % args.checkpoint_interval == 0 or step + 1 == args.steps:
        checkpoint.save(out_dir, step + 1, model, optimizer, policy.config, tokenizer, model_path,
                        {"method": method.state_dict() if method is not None else {}, "skipped_steps": skipped_steps,
                         "args": vars(args)}, master)
if ddp:
    dist.destroy_process_group()
