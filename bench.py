"""Benchmarks against peers, each measured as a ratio in one run on the same machine.

    python bench.py rollout   # our KV-cached sampler (eager, compiled) vs transformers.generate (tokens/s)
    python bench.py kernels   # fused Triton kernels vs eager PyTorch (time, peak memory; needs CUDA)
    python bench.py train     # our training step vs TRL's GRPOTrainer; CTWA's extra cost vs linear
"""
import argparse


def matmul_peak(dev, dtype, n=2048, reps=5):
    """The machine's measured matmul throughput (FLOP/s): best of `reps` n x n x n matmuls, the roofline the
    benchmarks report their fraction of (a decode or training step cannot run its matmuls faster than this)."""
    import time

    import torch

    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):  # the first is warm-up
        t0 = time.perf_counter()
        a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def bench_rollout(args):
    """Tokens/s of rollout.generate (eager and --compile) vs transformers' generate, on random Qwen2-shaped models.

    Two shapes: bench's ~39M-parameter model (32 ragged prompts of 8..64 tokens x G=4, 128 new tokens) and a small
    4-layer, hidden-256, 4k-vocab one (16 ragged prompts x G=4, 64 new tokens), where per-step overhead dominates.
    Temperature 1, no top-k/top-p, no EOS (every row runs full length, so all samplers do identical work). Warm-up
    first (for the compiled sampler that is the compile, reported apart), then best of REPEATS, alternating the
    samplers so background load hits all alike. fp32 on CPU; bf16 on a CUDA GPU. The roofline fraction is the decode's
    matmul FLOPs (2 x parameters per token, the embedding lookup excluded, plus attention over the cache) per second
    over the measured peak of one large matmul.
    """
    import os
    import platform
    import tempfile
    import time

    import torch
    import transformers

    from model import Transformer
    from rollout import generate

    REPEATS = 3
    shapes = [("39M", dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                           num_attention_heads=8, num_key_value_heads=2), 32, 8, 64, 128),
              ("4L-256", dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2), 16, 4, 32, 64)]
    G = 4
    dev, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    peak = matmul_peak(dev, dtype)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}, transformers {transformers.__version__}; "
          f"measured matmul peak {peak / 1e9:.0f} GFLOP/s ({dtype}, 2048^3)")
    for name, shape, PROMPTS, MIN_LEN, MAX_LEN, NEW_TOKENS in shapes:
        shape = dict(shape, max_position_embeddings=1024, tie_word_embeddings=True)
        torch.manual_seed(args.seed)
        hf = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**shape)).eval()  # sdpa
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            ours = Transformer.from_pretrained(d).eval().to(dev, dtype)
        hf.to(dev, dtype)
        g = torch.Generator().manual_seed(args.seed)
        lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (PROMPTS,), generator=g).tolist()
        prompts = [torch.randint(1, shape["vocab_size"], (n,), generator=g).tolist() for n in lengths]
        ids = torch.zeros(PROMPTS, MAX_LEN, dtype=torch.long)  # (P, Pw) left-padded for HF
        mask = torch.zeros(PROMPTS, MAX_LEN, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, MAX_LEN - len(p):], mask[i, MAX_LEN - len(p):] = torch.tensor(p), 1
        ids, mask = ids.to(dev), mask.to(dev)

        def ours_fn(compile):
            def run(n):
                ro = generate(ours, prompts, n, temperature=1.0, group_size=G, compile=compile,
                              generator=torch.Generator(dev).manual_seed(0))
                return ro.sequences.size(0) * ro.completion_mask.size(1)
            return run

        def run_hf(n):
            with torch.inference_mode():
                out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                  top_p=1.0, num_return_sequences=G, max_new_tokens=n, min_new_tokens=n,
                                  eos_token_id=None, pad_token_id=0)
            return out.size(0) * (out.size(1) - MAX_LEN)

        samplers = {"ours eager": ours_fn(False), "ours compiled": ours_fn(True), "transformers": run_hf}
        best, warm = {k: float("inf") for k in samplers}, {}
        for key, fn in samplers.items():  # warm-up at the full length (the compiled cache shape is the timed one)
            t0 = time.perf_counter()
            fn(NEW_TOKENS)
            warm[key] = time.perf_counter() - t0
        for _ in range(REPEATS):
            for key, fn in samplers.items():
                t0 = time.perf_counter()
                tokens = fn(NEW_TOKENS)  # .size() returns at once: synchronize before reading the clock
                if dev == "cuda":
                    torch.cuda.synchronize()
                best[key] = min(best[key], time.perf_counter() - t0)
                assert tokens == PROMPTS * G * NEW_TOKENS, f"{key} generated {tokens} tokens"
        n_tok = PROMPTS * G * NEW_TOKENS
        C, L = shape["hidden_size"], shape["num_hidden_layers"]
        matmul = ours.num_params() - ours.model.embed_tokens.weight.numel() * (not shape["tie_word_embeddings"])
        attn = 4 * L * C * (MAX_LEN + NEW_TOKENS / 2)  # q.k and p.v over the average cache length
        flops = 2 * matmul + attn  # per generated token (the tied embedding counts once, as the LM head)
        gpu = f", {torch.cuda.get_device_name()}" if dev == "cuda" else ""
        print(f"\nmodel {name}: random Qwen2-shaped {ours.num_params() / 1e6:.1f}M params ({shape}), {dtype} "
              f"{dev}{gpu}; {PROMPTS} prompts of {MIN_LEN}..{MAX_LEN} tokens x G={G}, {NEW_TOKENS} new tokens, "
              f"T=1, no EOS; best of {REPEATS}; {flops / 1e6:.0f} MFLOP per token")
        for key in samplers:
            rate = n_tok / best[key]
            print(f"  {key:14s}: {rate:9.1f} tokens/s ({best[key]:.2f} s), {100 * rate * flops / peak:4.1f}% of the "
                  f"matmul roofline; first call {warm[key]:.1f} s" +
                  (" (includes compiling)" if key == "ours compiled" else ""))
        for key in ("ours eager", "ours compiled"):
            print(f"  ratio {key} / transformers: {best['transformers'] / best[key]:.2f}x")
    print(f"1-min load average at the end {os.getloadavg()[0]:.1f} (other jobs slow every sampler)")


def bench_kernels(args):
    """Fused Triton kernels vs eager PyTorch: forward+backward time and peak memory, both measured in this run.

    Log-prob path (kernels.token_logprobs vs log_softmax over materialised logits), bf16, at Liger's GRPO benchmark
    shape (B=16, T=1024, C=2048, V=128k) and at the paper's batch (512 completions x 1024 tokens, Qwen2.5-1.5B:
    C=1536, V=151,936; eager needs ~160 GB of logits there and is expected to run out of memory). Loss kernel
    (kernels.grpo_loss vs its eager reference: clipped surrogate, dual clip, k3 KL) at 16 x 1024 and 512 x 1024.
    Peak memory is measured above the inputs. Without CUDA it says so and returns; with TRITON_INTERPRET=1 on a
    CPU it runs the same code at tiny shapes as a dry run (timings meaningless).
    """
    import os
    import statistics
    import time

    import torch

    import kernels
    from kernels.grpo_loss import grpo_loss_ref
    from kernels.logprobs import token_logprobs_ref

    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        print("bench.py kernels needs a CUDA GPU (none found): nothing measured. "
              "TRITON_INTERPRET=1 python bench.py kernels dry-runs the same code at tiny shapes on CPU.")
        return
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    gen = torch.Generator(dev).manual_seed(args.seed)
    if not cuda:
        print("no CUDA: TRITON_INTERPRET=1 dry run at tiny shapes; the numbers below are not benchmarks")

    def measure(fn, reps):
        """(median seconds, peak bytes above what was allocated before) of fn(), or None when it runs out of memory."""
        try:
            fn()  # warm-up: Triton compile, allocator
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if cuda else 0
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            return statistics.median(times), (torch.cuda.max_memory_allocated() - base if cuda else 0)
        except torch.OutOfMemoryError:
            return None

    def report(title, fused, eager):
        print(title)
        for name, r in (("fused", fused), ("eager", eager)):
            peak = f"  peak {r[1] / 2**30:7.2f} GiB" if cuda and r else ""
            print(f"  {name}: " + ("out of memory" if r is None else f"{r[0] * 1e3:9.2f} ms{peak}"))
        if fused and eager:
            mem = f", peak memory {100 * (1 - fused[1] / eager[1]):.0f}% less" if cuda else ""
            print(f"  eager/fused time {eager[0] / fused[0]:.2f}x{mem}")

    def logprob_step(fn, hidden, weight, targets):
        fn(hidden, weight, targets).sum().backward()
        hidden.grad = weight.grad = None

    def loss_step(fn, logp, old, adv, mask, ref):
        fn(logp, old, adv, mask, ref, kl_coef=1e-3, kl_type="k3")[0].sum().backward()
        logp.grad = None

    logprob_shapes = [("Liger GRPO shape", 16, 1024, 2048, 128256), ("paper batch", 512, 1024, 1536, 151936)]
    loss_shapes = [("micro-batch", 16, 1024), ("paper batch", 512, 1024)]
    if not cuda:
        logprob_shapes, loss_shapes = [("dry run", 2, 5, 8, 37)], [("dry run", 4, 5)]
    for title, B, T, C, V in logprob_shapes:
        inputs = (torch.randn(B, T, C, device=dev, dtype=dtype, generator=gen).requires_grad_(),  # hidden
                  (0.02 * torch.randn(V, C, device=dev, dtype=dtype, generator=gen)).requires_grad_(),  # LM head
                  torch.randint(0, V, (B, T), device=dev, generator=gen))  # targets
        reps = 3 if B * T * V > 2**32 else 10
        fused = measure(lambda: logprob_step(kernels.token_logprobs, *inputs), reps)
        eager = measure(lambda: logprob_step(token_logprobs_ref, *inputs), reps)
        report(f"log-prob path fwd+bwd, {title}: N={B} T={T} C={C} V={V} {dtype}", fused, eager)
        del inputs  # free before the next shape
    for title, N, T in loss_shapes:
        old = -3 * torch.rand(N, T, device=dev, generator=gen)
        inputs = ((old + 0.1 * torch.randn(N, T, device=dev, generator=gen)).requires_grad_(), old,
                  torch.randn(N, device=dev, generator=gen), torch.rand(N, T, device=dev, generator=gen) > 0.2,
                  old + 0.1 * torch.randn(N, T, device=dev, generator=gen))  # logp, old, adv, mask, ref
        fused = measure(lambda: loss_step(kernels.grpo_loss, *inputs), 50)
        eager = measure(lambda: loss_step(grpo_loss_ref, *inputs), 50)
        report(f"loss kernel fwd+bwd, {title}: N={N} T={T} fp32 (clip 0.2/0.2, dual clip 3, k3 KL)", fused, eager)


def _train_ours(s, model_dir, method, out_dir, threads, seed, steps):
    """`train.py --method <method> --steps <steps>` as a subprocess: (command, wall seconds of each step after the
    first, CPU seconds of the whole process)."""
    import json
    import os
    import resource
    import subprocess
    import sys

    cmd = [sys.executable, "train.py", "--method", method, "--task", "arith", "--model", model_dir, "--seed", str(seed),
           "--steps", str(steps), "--prompts-per-step", str(s["prompts"]), "--group-size", str(s["G"]),
           "--max-new-tokens", str(s["new_tokens"]), "--micro-batch", str(s["micro_batch"]), "--mini-batches", "1",
           "--lr", str(s["lr"]), "--lr-schedule", "constant", "--adv", "grpo", "--kl-coef", "0",
           "--clip-low", str(s["eps"]), "--clip-high", str(s["eps"]), "--clip-c", "-1",  # TRL has no dual clip
           "--eval-interval", "0", "--checkpoint-interval", "1000", "--out-dir", out_dir,
           "--cov-interval", "1000000"]  # no covariance diagnostic for linear (TRL has none); ctwa always needs it
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
        return rollout.rollout_logprobs(policy, batch, M)

    def fwd_bwd():  # one micro-batch of all rows, as bench_train's settings give train.py
        policy.zero_grad(set_to_none=True)
        logp = rollout.completion_logprobs(policy, batch, torch.arange(N))
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


def bench_train(args):
    """Seconds per training step of train.py vs TRL's GRPOTrainer on CPU, and CTWA's extra cost vs linear.

    Both train the same random Qwen2-shaped ~3M-parameter model (arith tokenizer) on the arith task's prompts in
    train.py's data order, with the same reward functions (accuracy, conciseness, clarity, weighted 1/3 each: our
    `linear` method = TRL's weighted reward sum), G, completion length, one micro-batch and one AdamW update per step
    (lr, weight decay 0.01, grad clip 1), GRPO advantages, token-mean loss (TRL's loss_type="dapo"), eps = 0.2, no dual
    clip (TRL has none), no KL (TRL's default beta=0), fp32 (TRL defaults to bf16 autocast), no activation
    checkpointing (TRL defaults to it). tests/test_trl_parity.py shows both compute the same advantages, loss and
    gradients on one batch. Steps after a warm-up step are timed in wall seconds (median) and CPU seconds (mean; the
    robust figure on a busy machine). Threads: OMP_NUM_THREADS, default 1 for every trainer (on a shared machine,
    multi-threaded BLAS stalls when cores are oversubscribed).
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
    s = dict(steps=8, prompts=8, G=8, new_tokens=32, micro_batch=64, lr=1e-5, eps=0.2)
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
    shape = dict(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
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
    cpu_linear, cpu_ctwa = (cpu_linear - cpu_one) / (S - 1), (cpu_ctwa - cpu_one) / (S - 1)
    med = statistics.median

    def fmt(wall, cpu):
        return f"{med(wall):6.2f} s/step wall (steps 2..{S}: {', '.join(f'{t:.2f}' for t in wall)}), {cpu:5.2f} s CPU"

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, {threads} torch "
          f"thread(s) per trainer, load average {load_start:.1f} at start and {os.getloadavg()[0]:.1f} at end; torch "
          f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__ if trl else 'absent'}")
    print(f"model: random Qwen2-shaped, {n_params / 1e6:.1f}M params ({shape}), fp32 CPU")
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


BENCHES = {"rollout": bench_rollout, "kernels": bench_kernels, "train": bench_train}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(BENCHES), help="which benchmark to run")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    BENCHES[args.which](args)
