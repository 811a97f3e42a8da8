"""The paper's three objectives, prompt encoding and the `math500` prompt set; the embedded task is in arith.py.

The objectives are computed exactly as the paper's code does (spec/ctwa-reference.md §4), in the order
OBJECTIVES = (accuracy, conciseness, clarity), each 0 or 1:
- accuracy: the last \\boxed{...} answer equals the ground truth after the MATH string normalisation (Hendrycks et
  al., arXiv:2103.03874, as in verl's math_reward.py); `\\fbox` scores 0.
- conciseness: 1 if the response length in tokens (EOS included) is strictly below the all-time mean length of the
  training responses, updated with the current batch before it is scored; 1 before any training (RewardScorer).
- clarity: a non-blank boxed answer and at least 2 enumerators ("Step 1:", "2.", "- ") or 2 ordinals ("first", "then").

score() is the one scoring entry point: train.py calls it through RewardScorer (running mean), eval.py with a fixed
length threshold. math500 is the paper's prompt set: the official split from local parquet/JSONL or the hub.
"""
import json
import os
import re
import warnings
from dataclasses import dataclass

import pyarrow.parquet as pq
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

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


# ----------------------------------------------------------------------------- scoring


def _check_rows(responses, lengths, answers):
    if not len(responses) == len(lengths) == len(answers):
        raise ValueError(f"score needs one length and answer per response, got {len(responses)} responses, "
                         f"{len(lengths)} lengths, {len(answers)} answers")


def score(responses: list, lengths: list, answers: list, avg_length: float | None,
          guard=lambda fn, *args: fn(*args)) -> torch.Tensor:
    """rewards (N, K) float32 in OBJECTIVES order: the one scoring entry point of training and evaluation.

    lengths in tokens, EOS included; avg_length is the conciseness threshold (None: every response is concise).
    guard(fn, *args) calls each reward: RewardScorer's scores a raising reward 0 and counts it; this default raises.
    """
    _check_rows(responses, lengths, answers)
    rows = [[guard(accuracy, r, a), guard(conciseness, n, avg_length), guard(clarity, r)]
            for r, n, a in zip(responses, lengths, answers)]
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), len(OBJECTIVES))  # (N, K)


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
        """rewards (N, K) float32 in OBJECTIVES order (tasks.score against the running mean)."""
        _check_rows(responses, lengths, answers)  # before the mean changes: a refused batch leaves no trace
        if train:
            self.observe_lengths(lengths)
        return score(responses, lengths, answers, self.avg_length, self._safe)

    def state_dict(self) -> dict:
        return {"length_sum": self.length_sum, "length_count": self.length_count}

    def load_state_dict(self, state: dict):
        self.length_sum, self.length_count = float(state["length_sum"]), int(state["length_count"])


# ----------------------------------------------------------------------------- tokenizer, prompts, math500

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


def eos_ids(model_path: str, tokenizer) -> list[int]:
    """The token ids that end a completion, sorted: the tokenizer's EOS plus generation_config.json's eos_token_id
    (an int or a list), the ids the model's own generate stops at."""
    ids = {tokenizer.eos_token_id} - {None}
    path = os.path.join(model_path, "generation_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            eos = json.load(f).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos]) - {None}
    return sorted(ids)


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


def load_math500(split: str, tokenizer, data_path: str | None = None, num_prompts: int | None = None) -> Task:
    """Prompts and answers of the official split (hub seed 42) "train", "val" or "test", from the data_path folder
    (parquet/JSONL) or the hub, its first num_prompts rows (default: all)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    contents, answers, texts, bad = [], [], [], []
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
        answer = str(answer) if isinstance(answer, (int, float)) and not isinstance(answer, bool) else answer
        if not (isinstance(content, str) and content.strip() and isinstance(answer, str) and answer.strip()):
            bad.append(i)
            continue
        contents.append(content)
        answers.append(answer)
        texts.append(content.removesuffix(MATH_SUFFIX))
    rows = f"rows {bad[:5]}{' ...' if len(bad) > 5 else ''} have no problem or no answer"
    if not contents:
        raise ValueError(f"math500 {split}: no usable rows ({rows if bad else 'the file is empty'}): the file needs "
                         "problem and answer columns, or verl's prompt and reward_model.ground_truth")
    if bad:
        warnings.warn(f"math500 {split}: {rows}; skipped {len(bad)} of {len(bad) + len(contents)}")
    return Task("math500", split, encode_prompts(tokenizer, contents[:num_prompts]), answers[:num_prompts],
                texts[:num_prompts], len(bad))
