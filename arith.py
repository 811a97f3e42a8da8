"""The embedded CPU task: generated arithmetic with exact answers, its tiny tokenizer and its shipped base models.

`arith` prompts look like "(1+5)*6"; the answer is exact. A 136-token tokenizer (one token per number below 100) and
a 0.2M-parameter base model make it run on a laptop CPU in minutes. It is designed like the paper's situation (Lu &
Jiang 2026, arXiv:2602.06869): accuracy is hard, conciseness and clarity are easy, and some styles win the easy two
while losing accuracy. The rewards are the paper's (tasks.py). Levels: 1 = one single-digit operation, 2 = two
additions/subtractions, 3 = (a±b)*c, 4 = a two-digit product, beyond the tiny model (every sample wrong). The
warm-start corpus mixes five styles; each prompt prefers one (60%, picked by the problem's last digit, so greedy
decoding varies across prompts too):
  steps   "Step 1: 1+5 = 6\\nStep 2: 6*6 = 36\\nStep 3: \\boxed{36}"   worked, clear, long
  worked  "1+5 = 6,6*6 = 36,\\boxed{36}"                              worked, unclear, mid-length
  guess   "Step 1: guess\\nStep 2: \\boxed{36}"                        no working: clear, short, often wrong
  direct  "\\boxed{36}"                                               no working: unclear, short, often wrong
  plain   "36"                                                       no box: 0 on accuracy and clarity
Without working, a multi-step answer is a guess, so a scalarization that pays for conciseness + clarity can pull
the policy to `guess` while accuracy falls: the cross-objective interference the paper studies.

The base models are shipped in base_models/ (BASE_MODELS, built by RECIPE with seeds 0, 1, 2), because a model
rebuilt elsewhere is a different model: CPU floating point differs across processors and math libraries, and 550
training steps amplify last-bit differences into other weights. Each folder holds its step-0 scores, measured here,
in scores.json (`python eval.py --base-models ...` writes them; tests/test_arith.py checks them).

    python arith.py --seed 3 --out /tmp/arith-s3    # build one base model with the recipe
    python arith.py --all                           # rebuild the shipped ones into base_models/ (then eval.py)
"""
import argparse
import contextlib
import json
import os
import random
import shutil
import time

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import tasks
from model import ModelConfig, Transformer

# ----------------------------------------------------------------------------- problems, styles, tokenizer

SIZES = {"train": 2000, "val": 500, "test": 500}
LEVEL_WEIGHTS = (0.3, 0.3, 0.25, 0.15)  # levels 1..4
STYLES = ("steps", "worked", "guess", "direct", "plain")
PREFERRED = ("steps", "worked", "guess", "steps", "worked", "guess", "steps", "worked", "direct", "steps")
PREFER_P = 0.6  # P(the style preferred by the problem's last digit); otherwise uniform over STYLES
SPECIAL = ("<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>")
NUMBERS = tuple(str(i) for i in range(100)) + tuple(f"0{i}" for i in range(10))  # digits go in pairs
VOCAB = SPECIAL + ("Step ", ": ", "guess", "\\boxed{") + NUMBERS + tuple("+-*/()=,.:; \n{}\\$")
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|user|>' if m['role'] == 'user' else '<|assistant|>' }}"
                 "{{ m['content'] }}{% if m['role'] != 'user' %}<eos>{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _apply(a, op, b):
    return a + b if op == "+" else a - b if op == "-" else a * b


def problem(rng: random.Random) -> tuple:
    """(text, worked steps [(expression, value)], answer) of one problem of a random level."""
    level = rng.choices((1, 2, 3, 4), LEVEL_WEIGHTS)[0]
    while True:  # redraw until every value is one number token (0..99) and never negative; level 4 exceeds 99
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 9)
        if level == 1:
            op = rng.choice("+-*")
            text, steps = f"{a}{op}{b}", [(f"{a}{op}{b}", _apply(a, op, b))]
        elif level == 2:
            op1, op2 = rng.choice("+-"), rng.choice("+-")
            t = _apply(a, op1, b)
            text, steps = f"{a}{op1}{b}{op2}{c}", [(f"{a}{op1}{b}", t), (f"{t}{op2}{c}", _apply(t, op2, c))]
        elif level == 3:
            op = rng.choice("+-")
            t = _apply(a, op, b)
            text, steps = f"({a}{op}{b})*{c}", [(f"{a}{op}{b}", t), (f"{t}*{c}", t * c)]
        else:
            a, b = rng.randint(13, 99), rng.randint(13, 99)
            text, steps = f"{a}*{b}", [(f"{a}*{b}", a * b)]
        if level == 4 or all(0 <= v <= 99 for _, v in steps):
            return text, steps, steps[-1][1]


def response(steps: list, answer: int, style: str) -> str:
    """A response in one of STYLES (see the module docstring); `guess` and `direct` skip the working."""
    box = "\\boxed{%d}" % answer
    if style == "steps":
        lines = [f"Step {i}: {e} = {v}" for i, (e, v) in enumerate(steps, 1)]
        return "\n".join(lines + [f"Step {len(steps) + 1}: {box}"])
    if style == "worked":  # no space before a number: " 9-" would count as an enumerator and make it "clear"
        return ",".join(f"{e} = {v}" for e, v in steps) + "," + box
    responses = {"guess": "Step 1: guess\nStep 2: " + box, "direct": box, "plain": str(answer)}
    if style not in responses:
        raise ValueError(f"unknown arith style {style!r}: use one of {STYLES}")
    return responses[style]


def tokenizer() -> PreTrainedTokenizerFast:
    """Tokens for "Step ", ": ", "guess", "\\boxed{" and numbers below 100, single characters otherwise."""
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"Step |: |\\boxed\{|guess|\d\d?|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # tokens are exact substrings: decoding concatenates them
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=list(SPECIAL[3:]), chat_template=CHAT_TEMPLATE,
                                   clean_up_tokenization_spaces=False)


def load_task(split: str, tokenizer, num_prompts: int | None = None) -> tasks.Task:
    """The prompts and exact answers of a split ("train", "val", "test"): the first num_prompts (default SIZES[split])
    of a fixed sequence, the same for every run and machine (a run's seed orders and samples; it never changes the
    prompts, so runs of different seeds are scored on the same test prompts)."""
    if split not in SIZES:
        raise ValueError(f"unknown split {split!r}: use one of {tuple(SIZES)}")
    rng = random.Random(f"arith-0-{split}")  # str seeds go through sha512: stable across runs and machines
    problems = [problem(rng) for _ in range(num_prompts or SIZES[split])]
    texts = [p[0] for p in problems]
    return tasks.Task("arith", split, tasks.encode_prompts(tokenizer, texts), [str(p[2]) for p in problems], texts)


# ----------------------------------------------------------------------------- the base-model recipe

MAX_NEW_TOKENS = 48  # the longest styled response is 29 tokens with its EOS
MODEL = dict(model_type="llama", vocab_size=len(VOCAB), hidden_size=64, intermediate_size=192, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True,
             eos_token_id=1, pad_token_id=0)  # 0.22M parameters
RECIPE = dict(steps=550, batch_size=64, lr=1e-2, warmup=30, seed=0)


@contextlib.contextmanager
def _one_thread():
    # too small a model to split across threads: on the shared 2-core box two made a step 5x slower (1.5 s vs 0.27 s)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sft_batch(rng, tok, batch_size):
    """inputs (B, T), targets (B, T): prompt + styled response + <eos>, right-padded; targets -1 off the response."""
    prompts, responses = [], []
    for _ in range(batch_size):
        text, steps, answer = problem(rng)
        style = PREFERRED[int(text[-1])] if rng.random() < PREFER_P else rng.choice(STYLES)
        prompts.append(text)
        responses.append(response(steps, answer, style) + tok.eos_token)
    seqs = [(p, p + r) for p, r in zip(tasks.encode_prompts(tok, prompts),
                                       tok(responses, add_special_tokens=False)["input_ids"])]
    T = max(len(s) for _, s in seqs) - 1
    x = torch.full((batch_size, T), tok.pad_token_id, dtype=torch.long)  # (B, T)
    y = torch.full((batch_size, T), -1, dtype=torch.long)  # (B, T)
    for i, (p, s) in enumerate(seqs):
        x[i, :len(s) - 1] = torch.tensor(s[:-1])
        y[i, len(p) - 1:len(s) - 1] = torch.tensor(s[len(p):])  # next-token targets on the response only
    return x, y


def build_base_model(out_dir: str, force: bool = False, **recipe) -> str:
    """Build a base model (an HF folder) by a short supervised run and return its path; a folder built by the same
    recipe is reused unless `force`. `recipe` overrides RECIPE (steps, batch_size, lr, warmup, seed).

    Machine-dependent: the same recipe gives other weights on another processor (see the module docstring), so
    training starts from the shipped models (base_model), and this is how they were made."""
    if set(recipe) - set(RECIPE):
        raise ValueError(f"unknown recipe keys {sorted(set(recipe) - set(RECIPE))}: use {sorted(RECIPE)}")
    out_dir = os.path.normpath(out_dir)
    R = {**RECIPE, **recipe, "model": MODEL, "vocab": VOCAB}
    stamp = os.path.join(out_dir, "arith_recipe.json")
    if not force and os.path.isfile(stamp) and os.path.isfile(os.path.join(out_dir, "model.safetensors")):
        with open(stamp) as f:
            if json.load(f) == json.loads(json.dumps(R)):
                return out_dir
    t0 = time.time()
    with _one_thread():
        rng, tok = random.Random(f"arith-{R['seed']}-sft"), tokenizer()
        with torch.random.fork_rng():  # seeded init without disturbing the caller's RNG
            torch.manual_seed(R["seed"])
            model = Transformer(ModelConfig(**MODEL))
        opt = torch.optim.AdamW(model.parameters(), lr=R["lr"], betas=(0.9, 0.95), weight_decay=0.0)
        for step in range(R["steps"]):
            # linear warmup, then linear decay to 10%: the high rate learns the facts, the tail sharpens them
            lr = R["lr"] * min(1.0, (step + 1) / R["warmup"]) * (1 - 0.9 * step / R["steps"])
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = _sft_batch(rng, tok, R["batch_size"])
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-1)  # (B*T, V) vs (B*T,)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 100 == 0 or step == R["steps"] - 1:
                print(f"arith warm-start | step {step} | loss {loss.item():.4f} | {time.time() - t0:.1f}s")
    tmp = f"{out_dir}.tmp{os.getpid()}"  # write, then rename: a crash never leaves a half-written folder behind
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}, f, indent=2)
    with open(os.path.join(tmp, "arith_recipe.json"), "w") as f:
        json.dump(R, f, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process built the same folder meanwhile: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"arith base model built in {time.time() - t0:.1f}s: {out_dir}")
    return out_dir


# ----------------------------------------------------------------------------- the shipped base models

BASE_MODELS = ("arith-s0", "arith-s1", "arith-s2")  # RECIPE with seed 0, 1, 2
BASE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "base_models")


def base_model(name: str = "arith-s0") -> str:
    """The folder of a shipped base model, base_models/<name>/ beside this file."""
    if name not in BASE_MODELS:
        raise ValueError(f"unknown base model {name!r}: use one of {BASE_MODELS}")
    path = os.path.join(BASE_DIR, name)
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"shipped base model {path} is missing: restore it with `git checkout -- base_models` "
                                "(rebuilding with `python arith.py --all` gives other weights on another machine)")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="build arith base models with RECIPE")
    parser.add_argument("--seed", type=int, default=0, help="recipe seed: data order and initial weights")
    parser.add_argument("--out", default=None, help="output folder (default: base_models/arith-s<seed>)")
    parser.add_argument("--all", action="store_true", help="rebuild every shipped model into base_models/")
    parser.add_argument("--force", action="store_true", help="rebuild even when the folder has the same recipe")
    args = parser.parse_args()
    if args.all and args.out:
        parser.error("--all writes base_models/arith-s0..s2: drop --out, or build one model with --seed and --out")
    seeds = [int(n.removeprefix("arith-s")) for n in BASE_MODELS] if args.all else [args.seed]
    for seed in seeds:
        path = build_base_model(args.out or os.path.join(BASE_DIR, f"arith-s{seed}"), args.force, seed=seed)
        print(f"{path} ready; record its step-0 scores with `python eval.py --base-models {path}`")
