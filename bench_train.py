"""Our GRPO training step (train.py as a subprocess) vs TRL's GRPOTrainer on CPU, in one run on the same machine, and
CTWA's extra cost over linear weighting; `python bench.py train` runs it.

    python bench_train.py                 # a random ~3M-parameter Qwen2-shaped model, 8 steps
    python bench_train.py --shape 135m    # SmolLM2-135M's layers (arith vocabulary), where a course would start
"""
import argparse
import json

from bench import matmul_peak

# random Qwen2-shaped models on the arith vocabulary; "135m" has SmolLM2-135M's layers, where a course would start
SHAPES = {"3m": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, steps=8),
          "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, steps=6)}

def _train_ours(s, model_dir, method, out_dir, threads, seed, steps):
    """`train.py --method <method> --steps <steps>` as a subprocess: (command, wall seconds of each step after the
    first, CPU seconds of the whole process)."""
    import os
    import resource
    import subprocess
    import sys

    # no diagnostics (TRL has none; ctwa always computes its covariance statistic)
    cmd = [sys.executable, "train.py", "--method", method, "--task", "arith", "--model", model_dir, "--seed", str(seed),
           "--steps", str(steps), "--prompts-per-step", str(s["prompts"]), "--group-size", str(s["G"]),
           "--max-new-tokens", str(s["new_tokens"]), "--micro-batch", str(s["micro_batch"]), "--mini-batches", "1",
           "--lr", str(s["lr"]), "--lr-schedule", "constant", "--adv", "grpo", "--kl-coef", "0",
           "--clip-low", str(s["eps"]), "--clip-high", str(s["eps"]), "--clip-c", "-1",  # TRL has no dual clip
           "--eval-interval", "0", "--checkpoint-interval", "1000", "--out-dir", out_dir, "--remove-padding",
           "--cov-interval", "1000000", "--law-interval", "0"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # eager kernels on CPU
    env["OMP_NUM_THREADS"] = str(threads)

    def cpu():  # user + system seconds of the finished child processes
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    cpu_before = cpu()
    run = subprocess.run(cmd, cwd=os.path.dirname(os.path.abspath(__file__)), env=env, capture_output=True, text=True)
    cpu_used = cpu() - cpu_before
    if run.returncode:
        raise SystemExit(f"train.py --method {method} failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        times = [json.loads(line)["time/step"] for line in f]
    shown = " ".join("python" if c == sys.executable else "MODEL" if c == model_dir else "OUT" if c == out_dir else c
                     for c in cmd)
    return f"OMP_NUM_THREADS={threads} {shown}", times[1:], cpu_used  # step 1 is warm-up (allocator, first calls)


def _train_trl(s, model_dir, tokenizer, texts, answers, seed):
    """TRL's GRPOTrainer (transformers' generate, no vLLM), in this process: (wall, CPU) seconds of each optimizer
    step after the first."""
    import contextlib
    import io
    import tempfile
    import time

    import datasets
    import transformers
    import trl

    import tasks

    K = len(tasks.OBJECTIVES)
    scorer, cache = tasks.RewardScorer(), {}

    def objective(k):  # TRL calls the K reward functions in order on one batch: the first scores all K, as ours does
        def reward(completions, completion_ids, answer, **kwargs):
            if k == 0:
                cache["r"] = scorer.score(completions, [len(c) for c in completion_ids], answer, train=True)
            return cache["r"][:, k].tolist()
        reward.__name__ = tasks.OBJECTIVES[k]
        return reward

    class Clock(transformers.TrainerCallback):  # one optimizer step: rollout, rewards, loss, backward, AdamW
        def __init__(self):
            self.wall, self.cpu = [], []

        def on_step_begin(self, *args, **kwargs):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *args, **kwargs):
            self.wall.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        config = trl.GRPOConfig(
            output_dir=out, max_steps=s["steps"], per_device_train_batch_size=s["micro_batch"],
            gradient_accumulation_steps=s["prompts"] * s["G"] // s["micro_batch"], num_generations=s["G"],
            max_completion_length=s["new_tokens"], num_iterations=1, temperature=1.0, top_p=1.0, top_k=0,
            learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0,
            optim="adamw_torch", beta=0.0, epsilon=s["eps"], loss_type="dapo", scale_rewards="group",
            reward_weights=[1 / K] * K, bf16=False, activation_checkpointing=False, use_bias_correction_kl=False,
            use_cpu=True, shuffle_dataset=False, seed=seed, report_to="none", save_strategy="no", logging_steps=10**6,
            disable_tqdm=True)
        trainer = trl.GRPOTrainer(model_dir, reward_funcs=[objective(k) for k in range(K)], args=config,
                                  train_dataset=datasets.Dataset.from_dict({"prompt": texts, "answer": answers}),
                                  processing_class=tokenizer, callbacks=[clock])
        with contextlib.redirect_stdout(io.StringIO()):  # its end-of-training metrics dict
            trainer.train()
    return clock.wall[1:], clock.cpu[1:]


def _train_phases(s, model_dir, prompts, eos_id, seed, reps=3):
    """Median CPU seconds of the pieces of our step, each timed alone in this process through the functions train.py
    calls: the rollout, one no-grad log-prob forward of the batch, the policy-loss forward + backward, and CTWA's
    weights + per-prompt covariance."""
    import statistics
    import time

    import torch

    import ctwa
    import loss
    import rollout
    from model import Transformer

    G, M, eps = s["G"], s["micro_batch"], s["eps"]
    policy = Transformer.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(seed)

    def sample():
        return rollout.generate(policy, prompts[:s["prompts"]], s["new_tokens"], group_size=G, eos_ids=(eos_id,),
                                generator=gen)

    batch = sample()
    mask, N = batch.completion_mask, batch.sequences.size(0)
    rewards = torch.randint(0, 2, (N, 3), generator=gen).float()  # (N, K): the values do not change the cost
    adv = loss.grpo_advantages(rewards.mean(1), G)

    def forward():
        return rollout.rollout_logprobs(policy, batch, M, remove_padding=True)

    def fwd_bwd():  # one micro-batch of all rows, as bench_train's settings give train.py
        policy.zero_grad(set_to_none=True)
        logp = rollout.completion_logprobs(policy, batch, torch.arange(N), remove_padding=True)
        loss.policy_loss(logp, batch.logprobs, adv, mask, None, eps, eps, None)[0].backward()

    def stats():
        w, _ = ctwa.completion_weights(forward_out, batch.logprobs, adv, mask, eps, eps)
        ctwa.covariance_statistic(rewards, w, G)

    forward_out = forward()
    pieces = {"rollout": sample, "forward": forward, "fwd_bwd": fwd_bwd, "stats": stats}
    result = {}
    for name, fn in pieces.items():
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        result[name] = statistics.median(times)
    return result


def main(args):
    """Seconds per training step of train.py vs TRL's GRPOTrainer on CPU, and CTWA's extra cost vs linear.

    Both train the same random Qwen2-shaped model (--shape; arith tokenizer) on the arith task's prompts in
    train.py's data order, with the same reward functions (accuracy, conciseness, clarity, weighted 1/3 each: our
    `linear` method = TRL's weighted reward sum), G, completion length, one micro-batch and one AdamW update per step
    (lr, weight decay 0.01, grad clip 1), GRPO advantages, token-mean loss (TRL's loss_type="dapo"), eps = 0.2, no dual
    clip (TRL has none), no KL (TRL's default beta=0), fp32 (TRL defaults to bf16 autocast), no activation
    checkpointing (TRL defaults to it); ours with --remove-padding (each forward cut to its longest row).
    tests/test_trl_parity.py shows both compute the same advantages, loss and gradients on one batch. Steps after a
    warm-up step are timed in wall seconds (median) and CPU seconds (mean; the robust figure on a busy machine).
    Threads: OMP_NUM_THREADS, default 1 for every trainer (on a shared machine, multi-threaded BLAS stalls when cores
    are oversubscribed).
    Without trl installed the TRL part says so and the rest still runs.
    """
    import os
    import platform
    import statistics
    import tempfile
    import time

    os.environ.pop("TRITON_INTERPRET", None)  # the interpreter is for tests: time the eager CPU kernels
    import torch
    import transformers

    import arith

    try:
        import trl
    except ImportError:
        trl = None
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    s = dict(steps=SHAPES[args.shape]["steps"], prompts=8, G=8, new_tokens=32, micro_batch=64, lr=1e-5, eps=0.2)
    S = s["steps"]
    seed, t_start, load_start = args.seed, time.perf_counter(), os.getloadavg()[0]
    tokenizer = arith.tokenizer()
    train_set = arith.load_task("train", tokenizer)
    order = torch.randperm(len(train_set.prompts), generator=torch.Generator().manual_seed(seed))  # train.py, epoch 0
    order = order[:S * s["prompts"]].tolist()
    prompts = [train_set.prompts[i] for i in order]
    texts = [tokenizer.decode(p) for p in prompts]  # chat-templated text that TRL re-encodes to the same ids
    if tokenizer(texts, add_special_tokens=False)["input_ids"] != prompts:
        raise SystemExit("the arith prompts do not round-trip through the tokenizer: TRL would see other prompts")
    answers = [train_set.answers[i] for i in order]
    shape = dict(vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
                 **{k: v for k, v in SHAPES[args.shape].items() if k != "steps"})
    peak = matmul_peak("cpu", torch.float32)  # with the trainers' thread count
    with tempfile.TemporaryDirectory() as d:
        model_dir = os.path.join(d, "model")
        torch.manual_seed(seed)
        hf = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(
            **shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
        hf.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        n_params = sum(p.numel() for p in hf.parameters())
        # CPU seconds per step: a full run minus a 1-step run (start-up, warm-up step and final checkpoint cancel)
        _, _, cpu_one = _train_ours(s, model_dir, "linear", os.path.join(d, "one"), threads, seed, 1)
        cmd, linear, cpu_linear = _train_ours(s, model_dir, "linear", os.path.join(d, "linear"), threads, seed, S)
        _, ctwa_wall, cpu_ctwa = _train_ours(s, model_dir, "ctwa", os.path.join(d, "ctwa"), threads, seed, S)
        theirs, cpu_theirs = _train_trl(s, model_dir, tokenizer, texts, answers, seed) if trl else (None, None)
        pieces = _train_phases(s, model_dir, prompts, tokenizer.eos_token_id, seed)
        with open(os.path.join(d, "linear", "metrics.jsonl")) as f:  # mean completion length of each step
            lengths = [json.loads(line)["response_length"] for line in f if "response_length" in line]
    # tokens of each step after the first: G copies of its prompts and N completions; each is sampled (a forward,
    # 2 x params FLOPs per token) and trained on (forward + backward, 6 x params)
    tokens = [s["G"] * sum(map(len, prompts[i * s["prompts"]:(i + 1) * s["prompts"]])) + s["prompts"] * s["G"] * c
              for i, c in enumerate(lengths)][1:]
    flops = 8 * n_params * statistics.mean(tokens)
    cpu_linear, cpu_ctwa = (cpu_linear - cpu_one) / (S - 1), (cpu_ctwa - cpu_one) / (S - 1)
    med = statistics.median

    def fmt(wall, cpu):
        return (f"{med(wall):6.2f} s/step wall (steps 2..{S}: {', '.join(f'{t:.2f}' for t in wall)}), {cpu:5.2f} s "
                f"CPU, {100 * flops / med(wall) / peak:.1f}% of the matmul roofline")

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, {threads} torch "
          f"thread(s) per trainer, load average {load_start:.1f} at start and {os.getloadavg()[0]:.1f} at end; torch "
          f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__ if trl else 'absent'}")
    print(f"model: random Qwen2-shaped, {n_params / 1e6:.1f}M params ({shape}), fp32 CPU")
    print(f"roofline: 8 x params x {statistics.mean(tokens):.0f} tokens per step (ours; sampled, then trained on) = "
          f"{flops / 1e9:.1f} GFLOP at the measured matmul peak {peak / 1e9:.0f} GFLOP/s ({threads} thread(s))")
    print(f"settings: arith task, {s['prompts']} prompts x G={s['G']}, <= {s['new_tokens']} new tokens, temperature "
          f"1, micro-batch {s['micro_batch']}, lr {s['lr']}, eps {s['eps']}, no dual clip, no KL, {S} steps; wall = "
          f"median of steps 2..{S}, CPU = mean CPU seconds per step (robust to other load on the machine)")
    print(f"ours: {cmd}")
    print(f"ours  train.py --method linear : {fmt(linear, cpu_linear)}")
    if theirs is None:
        print("TRL   GRPOTrainer              : not measured, trl is not installed (pip install trl)")
    else:
        cpu_theirs = sum(cpu_theirs) / len(cpu_theirs)
        print(f"TRL   GRPOTrainer              : {fmt(theirs, cpu_theirs)}")
        print(f"speed-up ours vs TRL per step: {med(theirs) / med(linear):.2f}x wall, {cpu_theirs / cpu_linear:.2f}x "
              "CPU (target >= 3x)")
    print(f"ours  train.py --method ctwa   : {fmt(ctwa_wall, cpu_ctwa)}")
    print(f"ctwa / linear per step: {med(ctwa_wall) / med(linear):.3f} wall, {cpu_ctwa / cpu_linear:.3f} CPU "
          "(ctwa's extra: one post-update forward and the covariance statistic)")
    extra = pieces["forward"] + pieces["stats"]
    print(f"pieces of our step timed alone, CPU s: rollout {pieces['rollout']:.2f}, no-grad log-prob forward "
          f"{pieces['forward']:.2f} (CTWA's post-update forward; on-policy runs need no old-log-prob pass), loss "
          f"forward + backward {pieces['fwd_bwd']:.2f}, CTWA weights + covariance {pieces['stats']:.4f}")
    step = pieces["rollout"] + pieces["forward"] + pieces["fwd_bwd"] + pieces["stats"]
    print(f"CTWA's extra = post-update forward + statistics = {extra:.2f} CPU s = {100 * extra / step:.0f}% of our "
          f"step ({step:.2f} CPU s as the sum of its pieces)")
    print(f"bench time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--shape", choices=["3m", "135m"], default="3m", help="the random model's shape")
    main(parser.parse_args())
