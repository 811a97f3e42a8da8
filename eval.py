"""Evaluation, hypervolume, Pareto front and the interference detector for multi-objective RL runs.

Reproduces the analysis of Lu & Jiang 2026, "Uncovering Cross-Objective Interference in Multi-Objective
Alignment" (arXiv 2602.06869) on what train.py writes (<out>/config.json, <out>/metrics.jsonl, <out>/step-N/);
plots.py draws the paper's figures from the same logs and the summary.json written here.

Checkpoints -> per-objective scores on a task split (greedy, or --samples n at --temperature t), table + JSON:
    python eval.py --checkpoints base_models/arith-s0 out/step-60 --task arith --out results/eval.json
Base models -> step-0 scores (sampled T = 1, G = 4 and greedy), printed and written to <model>/scores.json:
    python eval.py --base-models base_models/arith-s*
Runs -> summary table per method (markdown on stdout and in summary.md, JSON in summary.json):
    python eval.py --runs runs/linear-s* runs/ctwa-s* --sweep runs/sweep-* --summary-dir results/

Conventions. A run's "final" value is its last eval/<obj> (greedy, test split) if logged, else the mean of
reward/<obj> over its last `window` steps; "base" is its first eval (step 0 = the base model), else its first `window`
steps. Hypervolume (reference point 0) uses the rewards in [0, 1], so conciseness enters as its reward (fraction of
responses shorter than the running mean length); the paper reports response length, so tables print both. A method's
HV = mean over seeds of the HV of each seed's final point. Std is over seeds (ddof 1).
"""
import argparse
import json
import math
import os

import numpy as np
import torch

import arith
import rollout
import tasks
from model import Transformer


# -------------------- hypervolume and Pareto front -------------------------------------------------------------------
def hypervolume(points, ref=None) -> float:
    """Exact volume dominated by `points` (n, K) above `ref` (default 0) for maximisation, slicing the last axis."""
    pts = [tuple(float(x) for x in p) for p in points]
    if not pts:
        return 0.0
    ref = (0.0,) * len(pts[0]) if ref is None else tuple(float(r) for r in ref)
    if any(len(p) != len(ref) for p in pts):
        raise ValueError(f"hypervolume: every point needs {len(ref)} coordinates like the reference point")
    return _hv([p for p in pts if all(x > r for x, r in zip(p, ref))], ref)


def _hv(pts, ref):
    if len(ref) == 1 or not pts:
        return max([p[0] for p in pts], default=ref[0]) - ref[0]
    # slab between consecutive last-axis levels: every point at or above the level dominates its (K-1)-dim slice
    levels = sorted({p[-1] for p in pts}, reverse=True) + [ref[-1]]
    return sum((hi - lo) * _hv([p[:-1] for p in pts if p[-1] >= hi], ref[:-1]) for hi, lo in zip(levels, levels[1:]))


def pareto_mask(points) -> list[bool]:
    """True for each point (n, K) that no other point weakly dominates with one strict improvement (maximisation)."""
    pts = np.asarray(points, dtype=float)
    return [not any((q >= p).all() and (q > p).any() for q in pts) for p in pts]


# -------------------- checkpoint evaluation --------------------------------------------------------------------------
def run_length_mean(path: str):
    """(conciseness running mean, its file) from the newest step-N/trainer_state.json beside `path`, else None's."""
    run = os.path.dirname(os.path.abspath(path))
    steps = [int(d[5:]) for d in os.listdir(run) if d.startswith("step-") and d[5:].isdigit()]
    state = os.path.join(run, f"step-{max(steps)}", "trainer_state.json") if steps else ""
    if not os.path.isfile(state):
        return None, None
    with open(state) as f:
        scorer = json.load(f).get("scorer", {})  # train.py's RewardScorer.state_dict()
    return (scorer["length_sum"] / scorer["length_count"], state) if scorer.get("length_count") else (None, None)


@torch.no_grad()
def sample_checkpoint(path: str, task: str, split: str = "test", samples: int = 1, temperature: float = 0.0,
                      max_new_tokens: int = 40, num_prompts=None, data_path=None, seed: int = 0, device: str = "cpu",
                      batch_size: int = 256) -> dict:
    """Completions of an HF-format checkpoint on a task split: `samples` per prompt (temperature 0 = greedy)."""
    if samples > 1 and temperature == 0:
        raise ValueError(f"--samples {samples} at temperature 0 repeats one greedy answer: pass --temperature > 0")
    tokenizer, net = tasks.load_tokenizer(path), Transformer.from_pretrained(path).to(device).eval()
    if task == "arith":
        data = arith.load_task(split, tokenizer, seed=seed, num_prompts=num_prompts)
    elif task == "math500":
        data = tasks.load_math500(split, tokenizer, data_path=data_path, num_prompts=num_prompts)
    else:
        raise ValueError(f"unknown task {task!r}: use 'arith' (the embedded CPU task) or 'math500'")
    gen, eos_ids = torch.Generator(device=device).manual_seed(seed), tasks.eos_ids(path, tokenizer)
    responses, lengths, P = [], [], max(1, batch_size // samples)  # big calls amortise the per-token overhead
    for i in range(0, len(data.prompts), P):
        ro = rollout.generate(net, data.prompts[i:i + P], max_new_tokens, temperature=temperature, eos_ids=eos_ids,
                              group_size=samples, generator=gen, pad_id=tokenizer.pad_token_id or 0)
        responses += tokenizer.batch_decode(ro.completions, skip_special_tokens=True)
        lengths += [len(c) for c in ro.completions]  # tokens including the EOS, as in training
    answers = [a for a in data.answers for _ in range(samples)]  # rows prompt-major, like the rollout
    return dict(responses=responses, lengths=lengths, answers=answers, texts=data.texts, samples=samples)


def score_completions(out: dict, length_threshold) -> dict:
    """Per-objective means of sample_checkpoint's completions, their mean length, and the fraction of prompts whose
    every sample is wrong; conciseness against `length_threshold` (tasks.score, as in training)."""
    rewards = tasks.score(out["responses"], out["lengths"], out["answers"], length_threshold)  # (N, K)
    all_wrong = rewards[:, 0].view(-1, out["samples"]).amax(1) == 0  # (P,)
    return dict(zip(tasks.OBJECTIVES, rewards.double().mean(0).tolist()),
                response_length=float(np.mean(out["lengths"])), all_wrong=all_wrong.double().mean().item())


def evaluate_checkpoints(paths: list, task: str, length_threshold=None, **sample_kw) -> list[dict]:
    """Score each checkpoint. Conciseness threshold: `length_threshold`, else the run's final running mean
    (run_length_mean), else the mean response length of the first checkpoint (so list the base model first)."""
    results, first_mean = [], None
    for path in paths:
        out = sample_checkpoint(path, task, **sample_kw)
        first_mean = float(np.mean(out["lengths"])) if first_mean is None else first_mean
        given = length_threshold is not None
        threshold, source = (length_threshold, "--length-threshold") if given else run_length_mean(path)
        if threshold is None:
            threshold, source = first_mean, f"mean response length of {paths[0]}"
        results.append(dict(checkpoint=path, **score_completions(out, threshold), length_threshold=threshold,
                            threshold_source=source, prompts=len(out["texts"]), completions=len(out["lengths"])))
    return results


def base_scores(path: str, group_size: int = 4, num_prompts=None) -> dict:
    """Step-0 scores of an arith base model on the test split (seed 0), as training step 1 sees it: `group_size`
    samples per prompt at temperature 1 (generator seed 0), and greedy; both judge conciseness against the sampled
    mean length, the running mean after one batch."""
    rows = group_size * (num_prompts or arith.SIZES["test"])  # one rollout call: the samples depend on the batching
    kw = dict(max_new_tokens=arith.MAX_NEW_TOKENS, num_prompts=num_prompts, batch_size=rows)
    sampled = sample_checkpoint(path, "arith", samples=group_size, temperature=1.0, **kw)
    greedy = sample_checkpoint(path, "arith", **kw)
    threshold = float(np.mean(sampled["lengths"]))
    return {name: dict(score_completions(out, threshold), length_threshold=threshold)
            for name, out in (("sampled", sampled), ("greedy", greedy))}


# -------------------- run logs ---------------------------------------------------------------------------------------
def load_run(run_dir: str) -> dict:
    """Read a train.py output folder: config.json and metrics.jsonl (lines of one step are merged, later wins)."""
    cfg_path, log_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.jsonl")
    for path in (cfg_path, log_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: --runs takes folders written by train.py --out-dir")
    with open(cfg_path) as f:
        config = json.load(f)
    if "method" not in config or "objectives" not in config:
        raise ValueError(f"{cfg_path} needs 'method' and 'objectives' (train.py writes both)")
    by_step = {}
    with open(log_path) as f:
        for i, line in enumerate(f):
            if line.strip():
                row = json.loads(line)
                if "step" not in row:
                    raise ValueError(f"{log_path} line {i + 1} has no 'step' key: is it a train.py metrics.jsonl?")
                by_step.setdefault(int(row["step"]), {}).update(row)
    targets = config.get("ctwa_cov_targets") if config["method"] == "ctwa" else None  # train.py logs every flag
    label = config["method"] + (f" ({', '.join(f'{t:g}' for t in targets)})" if targets else "")
    return dict(dir=run_dir, config=config, metrics=[by_step[s] for s in sorted(by_step)], label=label,
                objectives=list(config["objectives"]), seed=config.get("seed"), targets=targets)


def _series(metrics, key):
    """(steps, values) of a logged key. Step 0's eval/conciseness is dropped: no running mean exists before training,
    so train.py (like the reference, spec §4.3) counts every response as concise there."""
    rows = [(m["step"], float(m[key])) for m in metrics if isinstance(m.get(key), (int, float))
            and not (key == "eval/conciseness" and m["step"] == 0)]
    return [s for s, v in rows if math.isfinite(v)], [v for _, v in rows if math.isfinite(v)]


def _smooth(steps, values, window):
    """Trailing mean over the points whose step lies in (s - window, s]; window <= 1 leaves the curve as is."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    return [float(v[(s > t - window) & (s <= t)].mean()) for t in s] if window > 1 else list(values)


def _curve_key(metrics, name):
    """Prefer the greedy test-split curve eval/<name>; fall back to the training batch mean."""
    train_key = name if name == "response_length" else f"reward/{name}"
    return f"eval/{name}" if any(f"eval/{name}" in m for m in metrics) else train_key


def _endpoints(metrics, key, window):
    """(base, final) of a curve: first/last point for eval curves, mean of the first/last window steps otherwise."""
    steps, values = _series(metrics, key)
    if not steps:
        return math.nan, math.nan
    if key.startswith("eval/"):
        return values[0], values[-1]
    s, v = np.asarray(steps), np.asarray(values)
    return float(v[s < s[0] + window].mean()), float(v[s > s[-1] - window].mean())


# -------------------- interference detector --------------------------------------------------------------------------
def detect_interference(metrics: list, objectives: list, threshold: float = 0.05, window: int = 10) -> list[dict]:
    """Objectives whose smoothed curve fell more than `threshold` below its start while the smoothed score rose.

    Start = mean of the curve's first `window` steps (eval/<obj> if logged, else reward/<obj>); smoothed value at
    step s = trailing mean over (s - window, s], the score (or the mean reward) alike. One dict per flagged objective.
    """
    rows = [m for m in metrics if "score" in m or all(f"reward/{o}" in m for o in objectives)]
    # advantage- and gradient-level methods log no score: use the uniform mean, as the reference reports (spec §11)
    s_steps = np.array([m["step"] for m in rows])
    s_vals = np.array([m.get("score", np.mean([m.get(f"reward/{o}", 0.0) for o in objectives])) for m in rows])
    if not len(s_steps):
        raise ValueError("detect_interference: the log has no 'score' or reward/<obj> values; is it train.py's?")
    score_start = float(s_vals[s_steps < s_steps[0] + window].mean())
    found = []
    for obj in objectives:
        key = _curve_key(metrics, obj)
        steps, values = _series(metrics, key)
        start = float(np.mean([v for s, v in zip(steps, values) if s < steps[0] + window])) if steps else 0.0
        smooth = _smooth(steps, values, window)
        for step, value in zip(steps, smooth):
            in_score = (s_steps > step - window) & (s_steps <= step)
            if step < steps[0] + window or step < s_steps[0] + window - 1 or not in_score.any():
                continue  # both windows must be full before a drop can be told apart from the start
            if start - value > threshold and s_vals[in_score].mean() > score_start:
                found.append(dict(objective=obj, step=int(step), curve=key, start=start, value=value,
                                  final=smooth[-1], score_start=score_start, score=float(s_vals[in_score].mean())))
                break
    return found


# -------------------- summary across runs ----------------------------------------------------------------------------
def summarize_run(run: dict, window: int = 10, threshold: float = 0.05) -> dict:
    """Base and final value of each objective and of response length, final-point hypervolume, interference."""
    m, objs = run["metrics"], run["objectives"]
    ends = {name: _endpoints(m, _curve_key(m, name), window) for name in objs + ["response_length"]}
    base, final = {n: e[0] for n, e in ends.items()}, {n: e[1] for n, e in ends.items()}
    if any(row["step"] == 0 and "eval/conciseness" in row for row in m):
        base["conciseness"] = math.nan  # step 0's conciseness is no baseline (see _series); Δ length stands in
    point = [final[o] for o in objs]
    return dict(dir=run["dir"], label=run["label"], seed=run["seed"], base=base, final=final,
                hypervolume=hypervolume([point]) if all(map(math.isfinite, point)) else math.nan,
                interference=detect_interference(m, objs, threshold, window))


def _mean_std(values):
    v = np.asarray(values, dtype=float)
    return [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]


def group_runs(runs: list) -> dict:
    """label -> runs sharing it (the method, plus the covariance targets for CTWA), in order of appearance."""
    groups = {}
    for run in runs:
        groups.setdefault(run["label"], []).append(run)
    return groups


def summarize(runs: list, window: int = 10, threshold: float = 0.05) -> list[dict]:
    """One row per method: final means ± std over seeds, worst-objective change from base, hypervolume."""
    rows = []
    for label, group in group_runs(runs).items():
        objs, names = group[0]["objectives"], group[0]["objectives"] + ["response_length"]
        per = [summarize_run(r, window, threshold) for r in group]
        final = {n: _mean_std([p["final"][n] for p in per]) for n in names}
        base = {n: float(np.mean([p["base"][n] for p in per])) for n in names}
        change = {o: final[o][0] - base[o] for o in objs}
        worst = min((o for o in objs if math.isfinite(change[o])), key=change.get, default=objs[0])
        rows.append(dict(label=label, method=group[0]["config"]["method"], targets=group[0]["targets"],
                         objectives=objs, seeds=[p["seed"] for p in per], runs=per, base=base, final=final,
                         hypervolume=_mean_std([p["hypervolume"] for p in per]), change=change,
                         worst_change=[worst, change[worst]]))
    return rows


def _md(head, lines):
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), *lines])


def markdown_table(rows: list) -> str:
    """The README results table, one line per method; response length shows its change from base in brackets."""
    objs, lines = rows[0]["objectives"], []
    for r in rows:
        flagged = [d["objective"] for p in r["runs"] for d in p["interference"]]
        inter = ", ".join(f"{o} {flagged.count(o)}/{len(r['runs'])}" for o in dict.fromkeys(flagged)) or "none"
        (length, length_sd), worst, hv = r["final"]["response_length"], r["worst_change"], r["hypervolume"]
        lines.append([r["label"], str(len(r["runs"]))] + [f"{r['final'][o][0]:.3f} ± {r['final'][o][1]:.3f}"
                                                         for o in objs] +
                     [f"{length:.1f} ± {length_sd:.1f} ({length - r['base']['response_length']:+.1f})",
                      f"{worst[0]} {worst[1]:+.3f}", f"{hv[0]:.3f} ± {hv[1]:.3f}", inter])
    head = ["method", "seeds", *objs, "response length (Δ)", "worst Δ vs base", "hypervolume", "interference (runs)"]
    return _md(head, lines)


def report(run_dirs: list, summary_dir: str, sweep_dirs=(), window: int = 10, threshold: float = 0.05) -> dict:
    """Summary of runs (and of a CTWA target sweep): prints markdown, writes summary.{md,json} (plots.py reads it)."""
    runs = [load_run(d) for d in run_dirs]
    objs = runs[0]["objectives"]
    if any(r["objectives"] != objs for r in runs):
        raise ValueError("report: the runs were trained on different objective lists; compare like with like")
    rows = summarize(runs, window, threshold)
    points = [[r["final"][o][0] for o in objs] for r in rows]  # (methods, K) final means
    for r, on_front in zip(rows, pareto_mask(points)):
        r["pareto"] = on_front
    out = dict(window=window, threshold=threshold, front_hypervolume=hypervolume(points), methods=rows)
    sweep = [load_run(d) for d in sweep_dirs] or [r for r in runs if r["config"]["method"] == "ctwa"]
    text = markdown_table(rows)
    if sweep:
        out["sweep"] = summarize(sweep, window, threshold)
        text += "\n\nCTWA covariance-target sweep\n\n" + markdown_table(out["sweep"])
    print(text)
    for p in (p for r in rows for p in r["runs"]):
        hits = "; ".join(f"{d['objective']} fell {d['start']:.3f} -> {d['value']:.3f} by step {d['step']} while the "
                         f"score rose {d['score_start']:.3f} -> {d['score']:.3f}" for d in p["interference"])
        print(f"interference {p['dir']}: {hits or 'none detected'}")
    os.makedirs(summary_dir, exist_ok=True)
    with open(os.path.join(summary_dir, "summary.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(summary_dir, "summary.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # --- checkpoint evaluation
    parser.add_argument("--checkpoints", nargs="+", default=[], help="HF-format model folders to evaluate")
    parser.add_argument("--task", default="arith", choices=["arith", "math500"], help="prompt set and objectives")
    parser.add_argument("--split", default="test", help="train, val or test")
    parser.add_argument("--data-path", default=None, help="math500: folder with {train,val,test}.parquet or .jsonl")
    parser.add_argument("--prompts", type=int, default=None, help="evaluate the first N prompts (default: all)")
    parser.add_argument("--samples", type=int, default=1, help="completions per prompt (>1 needs --temperature)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: arith 40, math500 1024 (train.py)")
    parser.add_argument("--length-threshold", type=float, default=None, help="conciseness threshold in tokens "
                        "(default: the run's final running mean, else the first checkpoint's mean length)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed; also picks the arith test problems")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--out", default=None, help="write the checkpoint results to this JSON file")
    parser.add_argument("--base-models", nargs="+", default=[], help="arith base models: step-0 scores (sampled "
                        "T=1 G=4, and greedy) on the test split, written to <model>/scores.json")
    # --- runs: summary
    parser.add_argument("--runs", nargs="+", default=[], help="train.py output folders to compare")
    parser.add_argument("--sweep", nargs="+", default=[], help="CTWA runs of a covariance-target sweep (Fig. 4)")
    parser.add_argument("--summary-dir", default="results", help="folder for summary.{md,json}")
    parser.add_argument("--window", type=int, default=10, help="steps averaged for base/final values and the detector")
    parser.add_argument("--threshold", type=float, default=0.05, help="detector: drop below the start that counts")
    args = parser.parse_args()
    if not args.checkpoints and not args.base_models and not args.runs:
        parser.error("nothing to do: pass --checkpoints (evaluate models), --base-models (their step-0 scores) "
                     "and/or --runs (summary table)")
    if args.checkpoints:
        results = evaluate_checkpoints(
            args.checkpoints, args.task, args.length_threshold, split=args.split, samples=args.samples,
            temperature=args.temperature, max_new_tokens=args.max_new_tokens or {"arith": 40}.get(args.task, 1024),
            num_prompts=args.prompts, data_path=args.data_path, seed=args.seed, device=args.device)
        print(_md(["checkpoint", *tasks.OBJECTIVES, "response length", "all wrong", "length threshold (source)"],
                  [[r["checkpoint"], *(f"{r[o]:.3f}" for o in tasks.OBJECTIVES), f"{r['response_length']:.1f}",
                    f"{r['all_wrong']:.1%}", f"{r['length_threshold']:.1f} ({r['threshold_source']})"]
                   for r in results]))
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(dict(vars(args), results=results), f, indent=1)
    lines = []
    for path in args.base_models:
        scores = base_scores(path)
        with open(os.path.join(path, "scores.json"), "w") as f:  # the test split of seed 0, as tests/test_arith.py
            json.dump(dict(split="test", seed=0, group_size=4, max_new_tokens=arith.MAX_NEW_TOKENS, **scores), f,
                      indent=1)
        lines += [[path, name, *(f"{s[o]:.3f}" for o in tasks.OBJECTIVES), f"{s['response_length']:.1f}",
                   f"{s['all_wrong']:.1%}"] for name, s in scores.items()]
    if lines:
        print(_md(["base model", "decoding", *tasks.OBJECTIVES, "mean length", "prompts with every sample wrong"],
                  lines))
    if args.runs:
        report(args.runs, args.summary_dir, args.sweep, args.window, args.threshold)
