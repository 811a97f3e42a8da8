"""Prompt sets and their objectives: `math500` (the paper's setting) and `arith` (the embedded CPU task).

The three objectives are the paper's, computed exactly as its code does (spec/ctwa-reference.md §4), in the order
OBJECTIVES = (accuracy, conciseness, clarity), each 0 or 1:
- accuracy: the last \\boxed{...} answer equals the ground truth after the MATH string normalisation (Hendrycks et
  al., arXiv:2103.03874, as in verl's math_reward.py); `\\fbox` scores 0.
- conciseness: 1 if the response length in tokens (EOS included) is strictly below the all-time mean length of the
  training responses, updated with the current batch before it is scored; 1 before any training (RewardScorer).
- clarity: a non-blank boxed answer and at least 2 enumerators ("Step 1:", "2.", "- ") or 2 ordinals ("first", "then").

`arith` is generated arithmetic ("(1+5)*6") with exact answers, a 136-token tokenizer (one token per number below
100) and a 0.2M-parameter base model, designed like the paper's situation (Lu & Jiang 2026, arXiv:2602.06869):
accuracy is hard, conciseness and clarity are easy, and some styles win the easy two while losing accuracy. Levels:
1 = one single-digit operation, 2 = two additions/subtractions, 3 = (a±b)*c, 4 = a two-digit product, beyond the
tiny model (every sample wrong). The warm-start corpus mixes five styles; each prompt prefers one (60%, picked by
the problem's last digit, so greedy decoding varies across prompts too):
  steps   "Step 1: 1+5 = 6\\nStep 2: 6*6 = 36\\nStep 3: \\boxed{36}"   worked, clear, long
  worked  "1+5 = 6,6*6 = 36,\\boxed{36}"                              worked, unclear, mid-length
  guess   "Step 1: guess\\nStep 2: \\boxed{36}"                        no working: clear, short, often wrong
  direct  "\\boxed{36}"                                               no working: unclear, short, often wrong
  plain   "36"                                                       no box: 0 on accuracy and clarity
Without working, a multi-step answer is a guess, so a scalarization that pays for conciseness + clarity can pull
the policy to `guess` while accuracy falls: the cross-objective interference the paper studies.

    python tasks.py      # build (or reuse) the arith base model and print its per-objective scores
"""
import contextlib
import json
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from model import ModelConfig, Transformer
from rollout import generate

OBJECTIVES = ("accuracy", "conciseness", "clarity")

# ----------------------------------------------------------------------------- accuracy (spec §4.4)

_BRACE = re.compile(r"[{}]")


def last_boxed(text: str) -> str | None:
    """The last `\\boxed{...}` (braces balanced), else the last `\\fbox{...}`; `\\boxed ` (space) wins: up to `$`."""
    if "\\boxed " in text:
        return "\\boxed " + text.rpartition("\\boxed ")[2].partition("$")[0]
    start = text.rfind("\\boxed")
    start = start if start >= 0 else text.rfind("\\fbox")
    if start < 0:
        return None
    depth = 0
    for m in _BRACE.finditer(text, start):  # jump from brace to brace instead of walking every character
        depth += 1 if m.group() == "{" else -1
        if m.group() == "}" and depth == 0:  # tested on closing braces only, as the reference does
            return text[start:m.end()]
    return None


def _fix_fracs(s):
    # \frac12 -> \frac{1}{2}, \frac1{72} -> \frac{1}{72}; a bare trailing \frac raises (IndexError) as the reference
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        if p[0] == "{":
            out += "\\frac" + p
        elif len(p) < 2:
            return s
        else:
            out += "\\frac{" + p[0] + "}" + (p[1:] if p[1] == "{" else "{" + p[1] + "}" + p[2:])
    return out


def _fix_a_slash_b(s):
    if s.count("/") != 1:
        return s
    a, b = s.split("/")
    try:
        return "\\frac{%d}{%d}" % (int(a), int(b)) if s == f"{int(a)}/{int(b)}" else s
    except ValueError:
        return s


def normalize_answer(s: str) -> str:
    """The MATH normalisation, its 17 steps in order (spec §4.4); raises where the reference raises."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    if "\\text{ " in s:  # units: "5\text{ cm}" -> "5"; two unit blocks raise
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise ValueError("more than one '\\text{ ' block")
        s = parts[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    s = "0" + s if s[0] == "." else s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:  # "x = 3" -> " 3"
        s = s.split("=")[1]
    # \sqrt2 -> \sqrt{2} (a trailing \sqrt raises: IndexError), then drop spaces, fix \frac, 0.5 and a/b
    head, *tails = s.split("\\sqrt")
    s = head + "".join("\\sqrt" + (t if t[0] == "{" else "{" + t[0] + "}" + t[1:]) for t in tails)
    s = _fix_fracs(s.replace(" ", ""))
    return _fix_a_slash_b("\\frac{1}{2}" if s == "0.5" else s)


def is_equiv(a: str, b: str) -> bool:
    """Equal after normalisation; if normalising either raises, the raw strings are compared."""
    try:
        return normalize_answer(a) == normalize_answer(b)
    except Exception:
        return a == b


def accuracy(response: str, answer: str) -> float:
    """1.0 if the last boxed answer of `response` is equivalent to `answer`, else 0.0 (any failure scores 0)."""
    try:
        box = last_boxed(response)
        if box is None:
            return 0.0
        if box.startswith("\\boxed "):
            inner = box[len("\\boxed "):]
        elif box.startswith("\\boxed{"):  # the brace scan always ends on "}"
            inner = box[len("\\boxed{"):-1]
        else:  # \fbox{...} (and "\boxedx{...}") fail the reference's wrapper assertion: 0
            return 0.0
        return 1.0 if is_equiv(inner, answer) else 0.0
    except Exception:
        return 0.0


# ----------------------------------------------------------------------------- conciseness and clarity (§4.3, §4.5)


def conciseness(length: int, avg_length: float | None) -> float:
    """1.0 if `length` < the running mean of training lengths (ties give 0); 1.0 when there is no mean yet (None)."""
    return 1.0 if avg_length is None or not length >= avg_length else 0.0  # "not >=": the reference's test, NaN too


# The reference's boxed pattern, r"\\boxed\{\s*[^}\s][^}]*\}", backtracks quadratically over many unclosed boxes
# (80 ms at 20k chars, 9 s at 200k). Same answer in linear time: its first prefix match, then any "}" after it.
_BOXED_PREFIX = re.compile(r"\\boxed\{\s*[^}\s]")
_ENUMERATOR = re.compile(
    r"""
        (?:                                     # ── Variant A: numbered / lettered / roman
            (?:^|\s|\()                         # left boundary
            (?:\bstep\s*)?                      # optional "step"
            (?:\d+|[a-z]|[ivxlcdm]+)            # token
            [\)\.\:\-]                          # closing punctuation
        )
        |                                       # ── Variant B: bullets
        (?:^|\s)[-*•]\s+                        # boundary + bullet + space
    """,
    re.I | re.X | re.M,
)
_ORDINAL_WORDS = "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|next|then".split("|")
_ORDINAL = re.compile(r"\b(" + "|".join(_ORDINAL_WORDS) + r")\b", re.I)
_CASEFOLD = str.maketrans("İıſ", "iis")  # + lower(): every letter re.I matches to a letter of the ordinal words


def _at_least_two(pattern, text):
    it = pattern.finditer(text)  # the same non-overlapping matches as findall, stopping at the second
    return next(it, None) is not None and next(it, None) is not None


def clarity(response: str) -> float:
    """1.0 if there is a non-blank \\boxed{...} and ≥2 enumerator or ≥2 ordinal matches, else 0.0."""
    m = _BOXED_PREFIX.search(response)
    if m is None or response.find("}", m.end()) < 0:
        return 0.0
    # necessary conditions skip most regex scans: two enumerators consume two of ").:-*•"; an ordinal needs its word
    if sum(map(response.count, ").:-*•")) >= 2 and _at_least_two(_ENUMERATOR, response):
        return 1.0
    folded = response.translate(_CASEFOLD).lower()
    return 1.0 if any(w in folded for w in _ORDINAL_WORDS) and _at_least_two(_ORDINAL, response) else 0.0


class RewardScorer:
    """Scores completions on OBJECTIVES and owns the conciseness running mean (never reset; resumable).

    score(train=True) adds the batch's lengths to the mean first, then scores (the reference's order). Under DDP,
    call observe_lengths(globally gathered lengths), then score(..., train=False) on each rank's rows. A reward
    function that raises scores 0 for that completion with a warning, counted in `failures`.
    """

    def __init__(self):
        self.length_sum, self.length_count, self.failures = 0.0, 0, 0

    @property
    def avg_length(self) -> float | None:
        return self.length_sum / self.length_count if self.length_count else None

    def observe_lengths(self, lengths):
        self.length_sum += float(sum(lengths))
        self.length_count += len(lengths)

    def _safe(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            self.failures += 1
            warnings.warn(f"{fn.__name__} raised {type(e).__name__}: {e}; scored 0 ({self.failures} so far)")
            return 0.0

    def score(self, responses: list, lengths: list, answers: list, train: bool) -> torch.Tensor:
        """rewards (N, K) float32 in OBJECTIVES order; lengths in tokens, EOS included."""
        if not len(responses) == len(lengths) == len(answers):
            raise ValueError(f"score needs one length and answer per response, got {len(responses)} responses, "
                             f"{len(lengths)} lengths, {len(answers)} answers")
        if train:
            self.observe_lengths(lengths)
        avg = self.avg_length
        rows = [[self._safe(accuracy, r, a), self._safe(conciseness, n, avg), self._safe(clarity, r)]
                for r, n, a in zip(responses, lengths, answers)]
        return torch.tensor(rows, dtype=torch.float32).view(len(rows), len(OBJECTIVES))  # (N, K)

    def state_dict(self) -> dict:
        return {"length_sum": self.length_sum, "length_count": self.length_count}

    def load_state_dict(self, state: dict):
        self.length_sum, self.length_count = float(state["length_sum"]), int(state["length_count"])


# ----------------------------------------------------------------------------- tasks and math500

SPLITS = ("train", "val", "test")
MATH_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."  # spec §3.2
MATH500_HUB = "HuggingFaceH4/MATH-500"


@dataclass
class Task:
    name: str
    split: str
    prompts: list  # token-id lists, chat template applied when the tokenizer has one
    answers: list  # ground-truth strings
    texts: list  # the problem text, for logs
    skipped: int = 0  # malformed rows left out, each reported with its index


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """The tokenizer of an HF folder (tokenizer.json + tokenizer_config.json, with its chat template)."""
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(f"no tokenizer.json in {path!r}: pass an HF model folder that has its tokenizer files")
    return AutoTokenizer.from_pretrained(path)


def encode_prompts(tokenizer, contents: list) -> list:
    """Each user message rendered with the tokenizer's chat template when it has one, else raw (spec §3.3)."""
    if tokenizer.chat_template:
        contents = [tokenizer.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True,
                                                  tokenize=False) for c in contents]
    return tokenizer(contents, add_special_tokens=False)["input_ids"]


def _math500_rows(split, data_path):
    if data_path is not None:
        for ext in (".parquet", ".jsonl"):
            path = os.path.join(data_path, split + ext)
            if ext == ".parquet" and os.path.isfile(path):
                return pq.read_table(path).to_pylist()
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:  # an unparsable line becomes a malformed row, reported
                    return [_json_or_none(line) for line in f if line.strip()]
        raise FileNotFoundError(f"math500: no {split}.parquet or {split}.jsonl in {data_path!r}; copy data/math500 "
                                f"of github.com/yining610/ctwa there, or pass data_path=None to download {MATH500_HUB}")
    try:
        import datasets  # optional: only the online path needs it
    except ImportError:
        raise RuntimeError(f"math500: no data_path and no `datasets` package. Pass data_path=<folder with {split}"
                           ".parquet> (the official split: data/math500 of github.com/yining610/ctwa), or run "
                           f"`pip install datasets` to download {MATH500_HUB}") from None
    try:
        ds = datasets.load_dataset(MATH500_HUB, split="test")
    except Exception as e:
        raise RuntimeError(f"math500: could not load {MATH500_HUB} ({type(e).__name__}: {e}); offline, pass "
                           "data_path=<folder with train/val/test .parquet or .jsonl>") from e
    # the official split (spec §3.2): 300 train / 200 rest; the rest halved, its train half is test, its test half val
    first = ds.train_test_split(test_size=0.4, seed=42, shuffle=True)
    rest = first["test"].train_test_split(test_size=0.5, seed=42, shuffle=True)
    return {"train": first["train"], "test": rest["train"], "val": rest["test"]}[split].to_list()


def _json_or_none(line):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def load_math500(split: str, data_path: str | None = None):
    """(user messages, answers, problem texts, skipped) of a split: data_path folder (parquet/JSONL) or the hub."""
    contents, answers, texts, skipped = [], [], [], 0
    for i, row in enumerate(_math500_rows(split, data_path)):
        row = row if isinstance(row, dict) else {}
        msgs, rm = row.get("prompt"), row.get("reward_model")
        if msgs:  # verl rows (the shared parquet): the user message already ends with the instruction
            user = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"] \
                if isinstance(msgs, list) else [msgs]
            content, answer = (user or [None])[-1], rm.get("ground_truth") if isinstance(rm, dict) else None
        else:  # hub and JSONL rows: problem + answer
            problem = row.get("problem")
            content, answer = problem + MATH_SUFFIX if isinstance(problem, str) else None, row.get("answer")
        if not (isinstance(content, str) and content.strip() and isinstance(answer, str) and answer.strip()):
            skipped += 1
            warnings.warn(f"math500 {split}: row {i} has no problem or no answer; skipped ({skipped} so far)")
            continue
        contents.append(content)
        answers.append(answer)
        texts.append(content.removesuffix(MATH_SUFFIX))
    return contents, answers, texts, skipped


def load_task(name: str, split: str, tokenizer, *, data_path: str | None = None, seed: int = 0,
              num_prompts: int | None = None) -> Task:
    """Prompts and answers of task "arith" or "math500", split "train", "val" or "test".

    arith is generated from `seed` (same seed, same prompts); math500 is the official split (hub seed 42) from the
    data_path folder or the hub, truncated to its first num_prompts rows.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    if name == "arith":
        rng = random.Random(f"arith-{seed}-{split}")  # str seeds go through sha512: stable across runs and machines
        problems = [arith_problem(rng) for _ in range(num_prompts or ARITH_SIZES[split])]
        contents = texts = [p[0] for p in problems]
        answers, skipped = [str(p[2]) for p in problems], 0
    elif name == "math500":
        contents, answers, texts, skipped = load_math500(split, data_path)
        contents, answers, texts = contents[:num_prompts], answers[:num_prompts], texts[:num_prompts]
    else:
        raise ValueError(f"unknown task {name!r}: use 'arith' (the embedded CPU task) or 'math500'")
    return Task(name, split, encode_prompts(tokenizer, contents), answers, texts, skipped)


# ----------------------------------------------------------------------------- arith: problems, styles, tokenizer

ARITH_SIZES = {"train": 2000, "val": 100, "test": 200}
ARITH_LEVEL_WEIGHTS = (0.3, 0.3, 0.25, 0.15)  # levels 1..4
ARITH_STYLES = ("steps", "worked", "guess", "direct", "plain")
ARITH_PREFERRED = ("steps", "worked", "guess", "steps", "worked", "guess", "steps", "worked", "direct", "steps")
ARITH_PREFER_P = 0.6  # P(the style preferred by the problem's last digit); otherwise uniform over ARITH_STYLES
ARITH_SPECIAL = ("<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>")
ARITH_NUMBERS = tuple(str(i) for i in range(100)) + tuple(f"0{i}" for i in range(10))  # digits go in pairs
ARITH_VOCAB = ARITH_SPECIAL + ("Step ", ": ", "guess", "\\boxed{") + ARITH_NUMBERS + tuple("+-*/()=,.:; \n{}\\$")
ARITH_CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|user|>' if m['role'] == 'user' else '<|assistant|>' }}"
                       "{{ m['content'] }}{% if m['role'] != 'user' %}<eos>{% endif %}{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _apply(a, op, b):
    return a + b if op == "+" else a - b if op == "-" else a * b


def arith_problem(rng: random.Random) -> tuple:
    """(text, worked steps [(expression, value)], answer) of one problem of a random level."""
    level = rng.choices((1, 2, 3, 4), ARITH_LEVEL_WEIGHTS)[0]
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


def arith_response(steps: list, answer: int, style: str) -> str:
    """A response in one of ARITH_STYLES (see the module docstring); `guess` and `direct` skip the working."""
    box = "\\boxed{%d}" % answer
    if style == "steps":
        lines = [f"Step {i}: {e} = {v}" for i, (e, v) in enumerate(steps, 1)]
        return "\n".join(lines + [f"Step {len(steps) + 1}: {box}"])
    if style == "worked":  # no space before a number: " 9-" would count as an enumerator and make it "clear"
        return ",".join(f"{e} = {v}" for e, v in steps) + "," + box
    responses = {"guess": "Step 1: guess\nStep 2: " + box, "direct": box, "plain": str(answer)}
    if style not in responses:
        raise ValueError(f"unknown arith style {style!r}: use one of {ARITH_STYLES}")
    return responses[style]


def arith_tokenizer() -> PreTrainedTokenizerFast:
    """Tokens for "Step ", ": ", "guess", "\\boxed{" and numbers below 100, single characters otherwise."""
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(ARITH_VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"Step |: |\\boxed\{|guess|\d\d?|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # tokens are exact substrings: decoding concatenates them
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=list(ARITH_SPECIAL[3:]),
                                   chat_template=ARITH_CHAT_TEMPLATE, clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------- arith: the base model

ARITH_MAX_NEW_TOKENS = 48  # the longest styled response is 29 tokens with its EOS
ARITH_MODEL = dict(model_type="llama", vocab_size=len(ARITH_VOCAB), hidden_size=64, intermediate_size=192,
                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                   tie_word_embeddings=True, eos_token_id=1, pad_token_id=0)  # 0.22M parameters
ARITH_RECIPE = dict(steps=550, batch_size=64, lr=1e-2, warmup=30, seed=0)
DEFAULT_ARITH_DIR = os.path.join(os.path.expanduser("~"), ".cache", "ctwa-nano", "arith-base")


@contextlib.contextmanager
def _one_thread():
    # too small a model to split across threads: on the shared 2-core box two made a step 5x slower (1.5 s vs 0.27 s)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sft_batch(rng, tokenizer, batch_size):
    """inputs (B, T), targets (B, T): prompt + styled response + <eos>, right-padded; targets -1 off the response."""
    prompts, responses = [], []
    for _ in range(batch_size):
        text, steps, answer = arith_problem(rng)
        style = ARITH_PREFERRED[int(text[-1])] if rng.random() < ARITH_PREFER_P else rng.choice(ARITH_STYLES)
        prompts.append(text)
        responses.append(arith_response(steps, answer, style) + tokenizer.eos_token)
    seqs = [(p, p + r) for p, r in zip(encode_prompts(tokenizer, prompts),
                                       tokenizer(responses, add_special_tokens=False)["input_ids"])]
    T = max(len(s) for _, s in seqs) - 1
    x = torch.full((batch_size, T), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    y = torch.full((batch_size, T), -1, dtype=torch.long)  # (B, T)
    for i, (p, s) in enumerate(seqs):
        x[i, :len(s) - 1] = torch.tensor(s[:-1])
        y[i, len(p) - 1:len(s) - 1] = torch.tensor(s[len(p):])  # next-token targets on the response only
    return x, y


def arith_base_model(out_dir: str | None = None, force: bool = False, **recipe) -> str:
    """Path of the arith base model (an HF folder): reused when present, else built by a short supervised run.
    `recipe` overrides ARITH_RECIPE (steps, batch_size, lr, warmup, seed); another recipe's folder is rebuilt."""
    if set(recipe) - set(ARITH_RECIPE):
        raise ValueError(f"unknown recipe keys {sorted(set(recipe) - set(ARITH_RECIPE))}: use {sorted(ARITH_RECIPE)}")
    out_dir = os.path.normpath(out_dir or DEFAULT_ARITH_DIR)
    R = {**ARITH_RECIPE, **recipe, "model": ARITH_MODEL, "vocab": ARITH_VOCAB}
    stamp = os.path.join(out_dir, "arith_recipe.json")
    if not force and os.path.isfile(stamp) and os.path.isfile(os.path.join(out_dir, "model.safetensors")):
        with open(stamp) as f:
            if json.load(f) == json.loads(json.dumps(R)):
                return out_dir
    t0 = time.time()
    with _one_thread():
        rng, tokenizer = random.Random(f"arith-{R['seed']}-sft"), arith_tokenizer()
        with torch.random.fork_rng():  # seeded init without disturbing the caller's RNG
            torch.manual_seed(R["seed"])
            model = Transformer(ModelConfig(**ARITH_MODEL))
        opt = torch.optim.AdamW(model.parameters(), lr=R["lr"], betas=(0.9, 0.95), weight_decay=0.0)
        for step in range(R["steps"]):
            # linear warmup, then linear decay to 10%: the high rate learns the facts, the tail sharpens them
            lr = R["lr"] * min(1.0, (step + 1) / R["warmup"]) * (1 - 0.9 * step / R["steps"])
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = _sft_batch(rng, tokenizer, R["batch_size"])
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-1)  # (B*T, V) vs (B*T,)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 100 == 0 or step == R["steps"] - 1:
                print(f"arith warm-start | step {step} | loss {loss.item():.4f} | {time.time() - t0:.1f}s")
    tmp = f"{out_dir}.tmp{os.getpid()}"  # write, then rename: a crash never leaves a half-written folder behind
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}, f, indent=2)
    with open(os.path.join(tmp, "arith_recipe.json"), "w") as f:
        json.dump(R, f, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process built the same folder meanwhile: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"arith base model built in {time.time() - t0:.1f}s: {out_dir}")
    return out_dir


@torch.no_grad()
def arith_scores(path: str, split: str = "test", group_size: int = 4, num_prompts: int | None = None) -> dict:
    """Per-objective means, mean length and all-wrong prompt fraction on arith `split`, sampled (temperature 1, G per
    prompt) and greedy; conciseness is judged against the sampled responses' mean length, as at training step 1."""
    tokenizer, model = load_tokenizer(path), Transformer.from_pretrained(path).eval()
    task, scorer, out = load_task("arith", split, tokenizer, num_prompts=num_prompts), RewardScorer(), {}
    for name, temperature, G in (("sampled", 1.0, group_size), ("greedy", 0.0, 1)):
        with _one_thread():
            ro = generate(model, task.prompts, ARITH_MAX_NEW_TOKENS, temperature=temperature, group_size=G,
                          eos_ids=(tokenizer.eos_token_id,), generator=torch.Generator().manual_seed(0),
                          pad_id=tokenizer.pad_token_id)
        lengths = [len(c) for c in ro.completions]
        rewards = scorer.score(tokenizer.batch_decode(ro.completions, skip_special_tokens=True), lengths,
                               [a for a in task.answers for _ in range(G)], train=name == "sampled")  # (N, K)
        out[name] = {**dict(zip(OBJECTIVES, rewards.mean(0).tolist())), "length": sum(lengths) / len(lengths),
                     "all_wrong": (rewards[:, 0].view(-1, G).amax(1) == 0).float().mean().item()}
    return out


if __name__ == "__main__":
    t0 = time.time()
    path = arith_base_model()
    print(f"base model ready in {time.time() - t0:.1f}s: {path}")
    for name, scores in arith_scores(path).items():
        print(f"{name:8s} | " + " | ".join(f"{k} {v:.3f}" for k, v in scores.items()))
