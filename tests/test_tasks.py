"""Tests for tasks.py: the paper's three rewards (spec/ctwa-reference.md §4), the scoring entry point, EOS ids and
math500 loading (the arith task is tested in test_arith.py).

    python -m pytest -q tests/test_tasks.py
"""
import json
import os
import random
import re
import sys
import time

import pytest

import arith
import tasks
from tasks import OBJECTIVES, RewardScorer, accuracy, clarity, conciseness

SHARED_MATH500 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "math500")
REFERENCE_BOXED = re.compile(r"\\boxed\{\s*[^}\s][^}]*\}", re.S)  # clarity.py's patterns, verbatim
REFERENCE_ORDINAL = re.compile(r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|next|then)\b",
                               re.I)


def box(s):
    return "The answer is \\boxed{" + s + "}."


# spec §4.4 examples (checked against the reference code) and the normalisation edge cases
@pytest.mark.parametrize("pred, gt, want", [
    ("\\dfrac{1}{2}", "\\frac{1}{2}", 1), ("\\tfrac{3}{4}", "\\frac34", 1), ("0.5", "\\frac12", 1),
    ("1/2", "\\frac{1}{2}", 1), ("x = 3", "3", 1), ("k=3", "3", 1), ("xyz = 3", "3", 0), ("10\\%", "10", 1),
    ("90^\\circ", "90", 1), ("90^{\\circ}", "90", 1), ("5\\text{ cm}", "5", 1), ("5\\text{cm}", "5", 0),
    ("5\\text{ cm}\\text{ m}", "5", 0), ("\\left(1,2\\right)", "(1,2)", 1), ("\\left( 1, 2 \\right)", "(1,2)", 1),
    ("\\sqrt2", "\\sqrt{2}", 1), (".5", "\\frac{1}{2}", 1), ("\\$5", "5", 1), ("a", "A", 0), ("1 + 2", "1+2", 1),
    ("5.", "5", 0), ("1\\!000", "1000", 1), ("\\frac{1}{2}", "\\frac12", 1), ("-41", "-41", 1), ("2", "3", 0),
    ("x/y", "x/y", 1), ("2/4", "\\frac{2}{4}", 1), ("02/4", "\\frac{2}{4}", 0),
    ("2\\sqrt", "2\\sqrt", 1), ("2 \\sqrt", "2\\sqrt", 0),  # a trailing \sqrt raises: raw strings are compared
    ("\\frac", "\\frac", 1), ("\\frac1", "\\frac1", 1),  # a bare \frac raises, \frac1 is returned unchanged
])
def test_accuracy_normalisation(pred, gt, want):
    """The MATH normalisation decides equivalence exactly as the reference does."""
    assert accuracy(box(pred), gt) == want


@pytest.mark.parametrize("response, gt, want", [
    ("\\boxed{3} then \\boxed{4}", "4", 1), ("\\boxed{3} then \\boxed{4}", "3", 0),  # the last box counts
    ("\\boxed{3", "3", 0), ("\\fbox{7}", "7", 0), ("no box, 7", "7", 0), ("", "7", 0),
    ("\\boxed 5", "5", 1), ("so \\boxed 5$ done", "5", 1),  # `\boxed ` (space): up to the first $
    ("\\boxed{6} and \\boxed 5", "5", 1), ("\\boxed 5 then \\boxed{6}", "6", 0),  # the space branch wins
    ("\\boxed{\\frac{1}{2}}", "\\frac12", 1), ("\\boxed{\\frac{1}{2}", "\\frac12", 0),
    ("\\boxed{5}.", "5", 1), ("$\\boxed{5}$", "5", 1), ("\\boxed}{5}", "5", 0), ("\\boxedx{5}", "5", 0),
    ("\\boxed{\\text{(A)}}", "\\text{(A)}", 1), ("\\boxed{ 5 }", "5", 1), ("é \\boxed{∞}", "∞", 1),
])
def test_accuracy_extraction(response, gt, want):
    """Last-boxed extraction, including the `\\boxed ` branch, \\fbox scoring 0 and unclosed braces."""
    assert accuracy(response, gt) == want


def ref_compute_score(solution, gt):
    """verl's math_reward.compute_score (the ctwa fork, spec §4.4), ported line by line as the test oracle."""
    def last_boxed_only_string(string):
        idx = string.rfind("\\boxed")
        if "\\boxed " in string:
            return "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
        if idx < 0:
            idx = string.rfind("\\fbox")
            if idx < 0:
                return None
        i, right, depth = idx, None, 0
        while i < len(string):
            depth += string[i] == "{"
            if string[i] == "}":
                depth -= 1
                if depth == 0:
                    right = i
                    break
            i += 1
        return None if right is None else string[idx:right + 1]

    def fix_fracs(string):
        substrs = string.split("\\frac")
        new_str = substrs[0]
        for substr in substrs[1:]:
            new_str += "\\frac"
            if substr[0] == "{":
                new_str += substr
            else:
                if len(substr) < 2:
                    return string
                a, b = substr[0], substr[1]
                new_str += "{" + a + "}{" + b + "}" + substr[2:] if b != "{" else "{" + a + "}" + b + substr[2:]
        return new_str

    def fix_a_slash_b(string):
        if len(string.split("/")) != 2:
            return string
        try:
            a, b = int(string.split("/")[0]), int(string.split("/")[1])
            assert string == "{}/{}".format(a, b)
            return "\\frac{" + str(a) + "}{" + str(b) + "}"
        except Exception:
            return string

    def fix_sqrt(string):
        if "\\sqrt" not in string:
            return string
        splits = string.split("\\sqrt")
        return splits[0] + "".join("\\sqrt{" + t[0] + "}" + t[1:] if t[0] != "{" else "\\sqrt" + t for t in splits[1:])

    def strip_string(string):
        for old, new in [("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", ""),
                         ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")]:
            string = string.replace(old, new)
        if "\\text{ " in string:
            splits = string.split("\\text{ ")
            assert len(splits) == 2
            string = splits[0]
        string = string.replace("\\%", "").replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
        if len(string) == 0:
            return string
        if string[0] == ".":
            string = "0" + string
        if len(string.split("=")) == 2 and len(string.split("=")[0]) <= 2:
            string = string.split("=")[1]
        string = fix_fracs(fix_sqrt(string).replace(" ", ""))
        return fix_a_slash_b("\\frac{1}{2}" if string == "0.5" else string)

    def is_equiv(str1, str2):
        try:
            return strip_string(str1) == strip_string(str2)
        except Exception:
            return str1 == str2

    try:
        s = last_boxed_only_string(solution)
        if s is None:
            return 0.0
        if "\\boxed " in s:
            assert s[:7] == "\\boxed "
            answer = s[7:]
        else:
            assert s[:7] == "\\boxed{" and s[-1] == "}"
            answer = s[7:-1]
        return 1.0 if is_equiv(answer, gt) else 0.0
    except Exception:
        return 0.0


def test_accuracy_equals_reference_on_random_strings():
    """Extraction and normalisation agree with the reference code on random LaTeX-ish strings."""
    rng = random.Random(0)
    parts = ["\\boxed{", "\\boxed ", "\\boxed", "\\fbox{", "{", "}", "$", "\\frac", "\\dfrac", "\\sqrt", "1", "2", "/",
             ".", " ", "=", "x", "\\text{ ", "\\left(", "\\right)", "^\\circ", "\\%", "\\$", "\\!", "\\\\", "\n", "0.5"]
    gts = ["1", "\\frac{1}{2}", "\\frac12", "2", "x", "1/2", "\\sqrt{2}", "(1,2)", "12"]
    for _ in range(20000):
        s = "".join(rng.choice(parts) for _ in range(rng.randint(0, 10)))
        gt = rng.choice(gts + [s[-4:]])
        assert accuracy(s, gt) == ref_compute_score(s, gt), (s, gt)
        assert accuracy("\\boxed{" + s + "}", gt) == ref_compute_score("\\boxed{" + s + "}", gt), (s, gt)


def test_conciseness():
    """1 before any training mean; 1 strictly below the mean; ties and longer give 0."""
    assert conciseness(100, None) == 1.0
    assert conciseness(9, 10.0) == 1.0
    assert conciseness(10, 10.0) == 0.0
    assert conciseness(11, 10.0) == 0.0


@pytest.mark.parametrize("response, want", [
    ("Step 1: add. Step 2: divide. \\boxed{3}", 1), ("First, add. Then divide. \\boxed{3}", 1),
    ("The value is 5. \\boxed{3}", 0), ("1. a\n2. b\n\\boxed{ }", 0), ("- a\n- b\n\\boxed{3}", 1),
    ("x = 5. So y = 3. \\boxed{1}", 1), ("a) and b) \\boxed{2}", 1), ("Step 1: a Step 2: b", 0),
    ("Step 1: a Step 2: b \\boxed{\\frac{1}{2}}", 1), ("Step 1: a Step 2: b \\boxed{", 0),
    ("Step 1: a Step 2: b \\boxed{x", 0), ("Step 1: a Step 2: b \\boxed{} \\boxed{ 4 }", 1),
    ("first then \\boxed{\n2}", 1), ("firstly thenceforth \\boxed{2}", 0), ("", 0),
])
def test_clarity(response, want):
    """Spec §4.5 examples and edge cases: a non-blank box plus ≥2 enumerators or ≥2 ordinals."""
    assert clarity(response) == want


def reference_clarity(text):
    """clarity.py's compute_score, verbatim patterns and findall counts."""
    steps = len(tasks._ENUMERATOR.findall(text)) >= 2 or len(REFERENCE_ORDINAL.findall(text)) >= 2
    return 1.0 if REFERENCE_BOXED.search(text) and steps else 0.0


def test_clarity_equals_reference_on_random_strings():
    """The linear boxed check and the prefilters change speed only: same score as the reference on random text."""
    rng = random.Random(0)
    parts = ["\\boxed{", "\\boxed", "{", "}", " ", "\n", "a", "\\", "1", "Step 1:", "step", "2.", "(b)", "iv-",
             "- ", "* ", "•", "first", "THEN", "fİrst", "ſecond", "fıfth", "next", "tenths", ".", ":", ")", "x"]
    for _ in range(5000):
        s = "".join(rng.choice(parts) for _ in range(rng.randint(0, 14)))
        assert clarity(s) == reference_clarity(s), s


# each at 20k characters when k = 1, k times longer otherwise
ADVERSARIAL = {
    "unclosed boxes": lambda k: "\\boxed{a" * 2500 * k, "open braces": lambda k: "{" * 20000 * k,
    "close braces": lambda k: "}" * 20000 * k, "backslashes": lambda k: "\\" * 20000 * k,
    "brace soup": lambda k: "\\boxed{{\\frac{}}{\\sqrt" * 800 * k, "spaces": lambda k: "\\boxed{" + " " * 20000 * k,
    "unicode": lambda k: "∑∫é😀\u200b" * 4000 * k, "enumerators": lambda k: "Step 1: iiii- " * 1500 * k,
    "ordinals": lambda k: "first then " * 2000 * k, "space box": lambda k: "\\boxed " * 3000 * k,
    "fractions": lambda k: "\\frac" * 4000 * k, "roman": lambda k: "(" + "i" * 20000 * k + " ",
}
REWARD_CALLS = {"accuracy": lambda s: accuracy(s, "1"), "accuracy, boxed": lambda s: accuracy(s + "\\boxed{1}", s),
                "clarity": clarity}


def _cost(fn, arg, reps, tries=3):
    """CPU seconds of `reps` calls, best of `tries`: CPU time, not wall time, so that other processes taking the core
    (which interrupt a long measurement more often than a short one) do not skew the ratio."""
    best = float("inf")
    for _ in range(tries):
        t = time.process_time()
        for _ in range(reps):
            fn(arg)
        best = min(best, time.process_time() - t)
    return best


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_rewards_linear_on_adversarial_strings(name):
    """Never raising, and 8x the length costs under 24x the time: linear is 8x (up to ~2x more where the longer string
    no longer fits a cache), quadratic 64x (the reference's boxed regex); the margin absorbs timing noise from other
    processes on a shared machine."""
    small, large = ADVERSARIAL[name](1), ADVERSARIAL[name](8)
    for call_name, fn in REWARD_CALLS.items():
        reps = 1
        while _cost(fn, small, reps, tries=1) < 0.005:  # repeat until a timing spans 5 ms, well above its noise
            reps *= 4
        ratio = _cost(fn, large, reps) / _cost(fn, small, reps)
        assert ratio < 24, f"{name}, {call_name}: 8x the length took {ratio:.1f}x the time"


def test_rewards_on_one_megabyte():
    """1 MB of mixed adversarial text scores without raising: the last box counts, the enumerators make it clear."""
    s = "".join(v(1) for k, v in ADVERSARIAL.items() if k != "space box")  # `\\boxed ` would win over any later box
    s = (s * (1 + 2 ** 20 // len(s)))[:2 ** 20]
    accuracy(s, "1"), accuracy(ADVERSARIAL["space box"](1) + s, s)  # total: neither raises
    assert accuracy(s + "\\boxed{1}", "1") == 1.0 and clarity(s) == 1.0


def test_reward_scorer_running_mean_and_resume():
    """Training batches update the mean before scoring; validation does not; state round-trips through JSON."""
    sc = RewardScorer()
    r = sc.score(["\\boxed{1}", "\\boxed{2}"], [4, 8], ["1", "1"], train=False)  # no training yet: all concise
    assert r.shape == (2, len(OBJECTIVES)) and r[:, 1].tolist() == [1.0, 1.0] and sc.avg_length is None
    r = sc.score(["Step 1: a\nStep 2: b\n\\boxed{1}", "\\boxed{2}"], [4, 8], ["1", "1"], train=True)
    assert sc.avg_length == 6.0 and r.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    sc.score(["x"], [12], ["1"], train=True)
    assert sc.avg_length == 8.0
    sc.score(["x"], [100], ["1"], train=False)  # validation leaves the mean alone
    assert sc.avg_length == 8.0
    other = RewardScorer()
    other.load_state_dict(json.loads(json.dumps(sc.state_dict())))
    assert other.avg_length == 8.0
    other.observe_lengths([0, 0, 0])  # the DDP path: observe globally gathered lengths, then score(train=False)
    assert other.avg_length == 4.0


def test_score_is_the_scorers_scoring():
    """tasks.score with a threshold equals RewardScorer at the same running mean; its default lets a failure raise."""
    responses, lengths, answers = ["Step 1: a\nStep 2: b\n\\boxed{1}", "\\boxed{2}", "2"], [4, 8, 5], ["1", "2", "2"]
    sc = RewardScorer()
    want = sc.score(responses, lengths, answers, train=True)  # running mean 17 / 3
    assert want.tolist() == [[1, 1, 1], [1, 0, 0], [0, 1, 0]]
    assert tasks.score(responses, lengths, answers, 17 / 3).tolist() == want.tolist()
    assert tasks.score(responses, lengths, answers, None)[:, 1].tolist() == [1.0, 1.0, 1.0]
    assert tasks.score([], [], [], 5.0).shape == (0, len(OBJECTIVES))
    with pytest.raises(TypeError):
        tasks.score([None], [3], ["1"], 5.0)


def test_reward_scorer_counts_failures():
    """A reward that raises scores 0 with a counted warning; mismatched inputs are refused."""
    sc = RewardScorer()
    with pytest.warns(UserWarning, match="clarity raised"):
        r = sc.score([None, "\\boxed{1}"], [3, 3], ["1", "1"], train=True)
    assert sc.failures == 1 and r[0].tolist() == [0.0, 0.0, 0.0] and r[1, 0] == 1.0
    with pytest.raises(ValueError, match="one length and answer per response"):
        sc.score(["a", "b"], [1], ["1", "1"], train=True)
    assert sc.length_count == 2  # a refused batch leaves the running mean alone


def test_eos_ids(tmp_path):
    """The tokenizer's EOS plus generation_config.json's eos_token_id (int or list), sorted, without duplicates."""
    tok = arith.tokenizer()
    assert tasks.eos_ids(str(tmp_path), tok) == [1]  # no generation_config.json: the tokenizer's alone
    for eos, want in ((4, [1, 4]), ([3, 1, None], [1, 3]), (None, [1])):
        (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
        assert tasks.eos_ids(str(tmp_path), tok) == want


# ----------------------------------------------------------------------------- math500


@pytest.mark.skipif(not os.path.isdir(SHARED_MATH500), reason="shared MATH500 parquet not present")
def test_math500_from_shared_parquet():
    """The official split loads 300/100/100 rows, rendered with the chat template, answers from reward_model."""
    tok = arith.tokenizer()
    sizes = {s: len(tasks.load_math500(s, tok, data_path=SHARED_MATH500).answers) for s in tasks.SPLITS}
    assert sizes == {"train": 300, "val": 100, "test": 100}
    task = tasks.load_math500("train", tok, data_path=SHARED_MATH500, num_prompts=5)
    assert len(task.prompts) == 5 and task.skipped == 0 and task.answers[0] == "1"
    assert task.texts[0] == "If $t(x) = 3-g(x)$ and $g(x) = \\sqrt{x}$, then what is $t(g(16))$?"
    user, asst = tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    assert task.prompts[0][0] == user and task.prompts[0][-1] == asst
    tok.chat_template = None  # no template: the raw message is tokenized
    raw = tasks.load_math500("train", tok, data_path=SHARED_MATH500, num_prompts=1)
    assert raw.prompts[0] == tok(task.texts[0] + tasks.MATH_SUFFIX, add_special_tokens=False)["input_ids"]


def test_math500_jsonl_malformed_rows(tmp_path):
    """JSONL problem/answer rows get the instruction suffix; malformed rows are reported by index and skipped."""
    rows = [{"problem": "What is $1+1$?", "answer": "2"}, {"problem": "No answer here"}, "not json",
            {"answer": "3"}, {"problem": "What is $2+1$?", "answer": "3"}]
    (tmp_path / "test.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match=r"rows \[1, 2, 3\] have no problem or no answer; skipped 3 of 5"):
        task = tasks.load_math500("test", arith.tokenizer(), data_path=str(tmp_path))
    assert task.skipped == 3 and task.answers == ["2", "3"]
    assert task.texts == ["What is $1+1$?", "What is $2+1$?"]
    with pytest.raises(FileNotFoundError, match="no val.parquet or val.jsonl"):
        tasks.load_math500("val", arith.tokenizer(), data_path=str(tmp_path))


def test_math500_rejects_unknown_split():
    """An unknown split fails with a message naming the valid ones, before any data is looked for."""
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        tasks.load_math500("dev", arith.tokenizer())


def test_math500_offline_without_datasets_says_how_to_get_data(monkeypatch):
    """Without local files and without `datasets`, the error says how to get the data."""
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(RuntimeError, match="pip install datasets"):
        tasks.load_math500("test", arith.tokenizer())


def test_math500_hub_split(monkeypatch):
    """The hub path splits 500 problems 300/100/100 with seed 42 as the official preprocessing (spec §3.2)."""
    datasets = pytest.importorskip("datasets")
    fake = datasets.Dataset.from_dict({"problem": [f"What is {i}+0?" for i in range(500)],
                                       "answer": [str(i) for i in range(500)]})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: fake)
    first = fake.train_test_split(test_size=0.4, seed=42, shuffle=True)
    rest = first["test"].train_test_split(test_size=0.5, seed=42, shuffle=True)
    tok = arith.tokenizer()
    got = {s: tasks.load_math500(s, tok).answers for s in tasks.SPLITS}
    assert {s: len(a) for s, a in got.items()} == {"train": 300, "val": 100, "test": 100}
    assert got["train"] == first["train"]["answer"] and got["test"] == rest["train"]["answer"]
    assert got["val"] == rest["test"]["answer"] and not set(got["train"]) & set(got["test"])
