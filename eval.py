"""Evaluate model checkpoints and base models per objective: greedy or sampled completions on a task split, scored
by tasks.score exactly as in training.

Part of the reproduction of Lu & Jiang 2026, "Uncovering Cross-Objective Interference in Multi-Objective Alignment"
(arXiv 2602.06869); the summary of training runs (tables, summary.json, the detector, the law test) is report.py's.

Checkpoints -> per-objective scores on a task split (greedy, or --samples n at --temperature t), table + JSON:
    python eval.py --checkpoints base_models/arith-s0 out/step-60 --task arith --out results/eval.json
Base models -> step-0 scores (sampled T = 1, G = 4 and greedy), printed and written to <model>/scores.json:
    python eval.py --base-models base_models/arith-s*

Conventions. Conciseness is judged against a length threshold in tokens (EOS included, as in training):
--length-threshold if given, else the run's final running mean (step-N/trainer_state.json beside the checkpoint),
else the mean response length of the first checkpoint listed (so list the base model first). Rows are prompt-major,
like the rollout; "all wrong" is the fraction of prompts whose every sample scores accuracy 0.
"""
import argparse
import json
import os

import numpy as np
import torch

import arith
import rollout
import tasks
from model import Transformer


# -------------------- checkpoint evaluation --------------------------------------------------------------------------
def run_length_mean(path: str):
    """(conciseness running mean, its file relative to the working directory) from the newest
    step-N/trainer_state.json beside `path`, else None's."""
    run = os.path.dirname(os.path.abspath(path))
    steps = [int(d[5:]) for d in os.listdir(run) if d.startswith("step-") and d[5:].isdigit()]
    state = os.path.join(run, f"step-{max(steps)}", "trainer_state.json") if steps else ""
    if not os.path.isfile(state):
        return None, None
    with open(state) as f:
        scorer = json.load(f).get("scorer", {})  # train.py's RewardScorer.state_dict()
    return (scorer["length_sum"] / scorer["length_count"], os.path.relpath(state)) if scorer.get("length_count") \
        else (None, None)


@torch.no_grad()
def sample_checkpoint(path: str, task: str, split: str = "test", samples: int = 1, temperature: float = 0.0,
                      max_new_tokens: int = 40, num_prompts=None, data_path=None, seed: int = 0, device: str = "cpu",
                      batch_size: int = 256, compile: bool = False) -> dict:
    """Completions of an HF-format checkpoint on a task split: `samples` per prompt (temperature 0 = greedy)."""
    if samples > 1 and temperature == 0:
        raise ValueError(f"--samples {samples} at temperature 0 repeats one greedy answer: pass --temperature > 0")
    tokenizer, net = tasks.load_tokenizer(path), Transformer.from_pretrained(path).to(device).eval()
    if task == "arith":
        data = arith.load_task(split, tokenizer, num_prompts=num_prompts)
    elif task == "math500":
        data = tasks.load_math500(split, tokenizer, data_path=data_path, num_prompts=num_prompts)
    else:
        raise ValueError(f"unknown task {task!r}: use 'arith' (the embedded CPU task) or 'math500'")
    gen, eos_ids = torch.Generator(device=device).manual_seed(seed), tasks.eos_ids(path, tokenizer)
    responses, lengths, P = [], [], max(1, batch_size // samples)  # big calls amortise the per-token overhead
    for i in range(0, len(data.prompts), P):
        ro = rollout.generate(net, data.prompts[i:i + P], max_new_tokens, temperature=temperature, eos_ids=eos_ids,
                              group_size=samples, generator=gen, pad_id=tokenizer.pad_token_id or 0,
                              compile=compile)
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
    """Step-0 scores of an arith base model on the test split, as training step 1 sees it: `group_size`
    samples per prompt at temperature 1 (generator seed 0), and greedy; both judge conciseness against the sampled
    mean length, the running mean after one batch."""
    rows = group_size * (num_prompts or arith.SIZES["test"])  # one rollout call: the samples depend on the batching
    kw = dict(max_new_tokens=arith.MAX_NEW_TOKENS, num_prompts=num_prompts, batch_size=rows)
    sampled = sample_checkpoint(path, "arith", samples=group_size, temperature=1.0, **kw)
    greedy = sample_checkpoint(path, "arith", **kw)
    threshold = float(np.mean(sampled["lengths"]))
    return {name: dict(score_completions(out, threshold), length_threshold=threshold)
            for name, out in (("sampled", sampled), ("greedy", greedy))}


def _md(head, lines):
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), *lines])


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
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --samples and --temperature)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (train.py --compile)")
    parser.add_argument("--out", default=None, help="write the checkpoint results to this JSON file")
    # --- base models
    parser.add_argument("--base-models", nargs="+", default=[], help="arith base models: step-0 scores (sampled "
                        "T=1 G=4, and greedy) on the test split, written to <model>/scores.json")
    args = parser.parse_args()
    if not args.checkpoints and not args.base_models:
        parser.error("nothing to do: pass --checkpoints (evaluate models) and/or --base-models (their step-0 "
                     "scores); the summary of training runs is report.py --runs")
    for path in args.checkpoints + args.base_models:  # a typo: one line, not a traceback from deep in the loader
        if not os.path.isdir(path):
            raise SystemExit(f"eval.py: no such model folder: {path}")
    if args.checkpoints:
        results = evaluate_checkpoints(
            args.checkpoints, args.task, args.length_threshold, split=args.split, samples=args.samples,
            temperature=args.temperature, max_new_tokens=args.max_new_tokens or {"arith": 40}.get(args.task, 1024),
            num_prompts=args.prompts, data_path=args.data_path, seed=args.seed, device=args.device,
            compile=args.compile)
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
        with open(os.path.join(path, "scores.json"), "w") as f:  # the test split, as tests/test_arith.py reads it
            json.dump(dict(split="test", group_size=4, max_new_tokens=arith.MAX_NEW_TOKENS, **scores), f,
                      indent=1)
        lines += [[path, name, *(f"{s[o]:.3f}" for o in tasks.OBJECTIVES), f"{s['response_length']:.1f}",
                   f"{s['all_wrong']:.1%}"] for name, s in scores.items()]
    if lines:
        print(_md(["base model", "decoding", *tasks.OBJECTIVES, "mean length", "prompts with every sample wrong"],
                  lines))
