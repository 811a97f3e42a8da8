"""Benchmarks against peers, each measured as a ratio in one run on the same machine.

    python bench.py rollout   # our KV-cached sampler (eager, compiled) vs transformers.generate (tokens/s)
    python bench.py kernels   # fused Triton kernels vs eager PyTorch (time, peak memory; needs CUDA)
    python bench.py train     # our training step vs TRL's GRPOTrainer; CTWA's extra cost vs linear (bench_train.py)
    python bench.py padding   # how much of the training forward is padding, without and with --remove-padding
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


def bench_padding(args):
    """Share of the training forward's positions that are padding, as batched (left-padded prompts, right-padded
    completions) and with --remove-padding (rows sorted by length into micro-batches, each cut to its longest row), on
    real rollouts at temperature 1: arith's shipped base model arith-s0 on 4 steps of its train prompts (16 x G=8,
    40 new tokens); or, with --model and --data-path, a local HF model on the official MATH500 train prompts (chat
    template, 1024 new tokens: the math500 recipe's shape, --prompts x --group-size rows; slow on a CPU).
    """
    import time

    import torch

    import arith
    import rollout
    import tasks
    from actor import micro_batches
    from model import Transformer

    if args.model and not args.data_path:
        raise SystemExit("bench.py padding --model needs --data-path: a folder with MATH500's train.parquet")
    path = args.model or arith.base_model()
    tokenizer, model = tasks.load_tokenizer(path), Transformer.from_pretrained(path).eval()
    if args.model:
        prompts = tasks.load_math500("train", tokenizer, args.data_path, num_prompts=args.prompts).prompts
        steps, G, new_tokens, micro = [prompts], args.group_size, 1024, 16
    else:
        prompts = arith.load_task("train", tokenizer).prompts
        steps, G, new_tokens, micro = [prompts[16 * s:16 * s + 16] for s in range(4)], 8, 40, 64
    real = batched = packed = 0
    t0 = time.perf_counter()
    for s, step_prompts in enumerate(steps):
        ro = rollout.generate(model, step_prompts, new_tokens, temperature=1.0, group_size=G,
                              eos_ids=tasks.eos_ids(path, tokenizer), generator=torch.Generator().manual_seed(s))
        N, W = ro.sequences.shape
        real += (ro.attn_mask.sum() - N).item()  # the last token of a row is only a target
        batched += N * (W - 1)
        for rows in micro_batches(ro, torch.arange(N), micro, by_length=True):  # as train.py builds them
            packed += len(rows) * (ro.attn_mask[rows].sum(1).max().item() - 1)
    print(f"{path}: {len(steps)} step(s) of {len(steps[0])} prompts x G={G}, <= {new_tokens} new tokens, sampled in "
          f"{time.perf_counter() - t0:.0f} s; padding share of the training forward: {1 - real / batched:.1%} as "
          f"batched, {1 - real / packed:.1%} with --remove-padding at micro-batch {micro}")


def bench_train(args):
    """Our training step vs TRL's GRPOTrainer, and CTWA's extra cost: bench_train.py."""
    import bench_train
    bench_train.main(args)


BENCHES = {"rollout": bench_rollout, "kernels": bench_kernels, "train": bench_train, "padding": bench_padding}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(BENCHES), help="which benchmark to run")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--shape", choices=["3m", "135m"], default="3m", help="train: the random model's shape")
    parser.add_argument("--model", default=None, help="padding: a local HF model (default: arith's base model)")
    parser.add_argument("--data-path", default=None, help="padding: folder with MATH500's train.parquet")
    parser.add_argument("--prompts", type=int, default=8, help="padding: MATH500 prompts")
    parser.add_argument("--group-size", type=int, default=4, help="padding: samples per MATH500 prompt")
    args = parser.parse_args()
    BENCHES[args.which](args)
