"""Summary of training runs: tables per configuration with bootstrap intervals, the interference detector, the
covariance-law test, hypervolume and the Pareto front, from the logs train.py writes (<out>/config.json,
<out>/metrics.jsonl).

Reproduces the analysis of Lu & Jiang 2026, "Uncovering Cross-Objective Interference in Multi-Objective
Alignment" (arXiv 2602.06869). Markdown goes to stdout and summary.md, the numbers to summary.json, which plots.py
draws the paper's figures from; eval.py scores checkpoints and base models. Reads logs only (numpy, no torch):
    python report.py --runs runs/linear-s* runs/ctwa-s* --sweep runs/sweep-* --out results/

Conventions. A run's "final" value is its last eval/<obj> (greedy, test split) if logged, else the mean of
reward/<obj> over its last `window` steps; "base" is its first eval (step 0 = the base model), else its first `window`
steps. Hypervolume (reference point 0) uses the rewards in [0, 1], so conciseness enters as its reward (fraction of
responses shorter than the running mean length); the paper reports response length, so tables print both. A row of
the summary is a configuration: the runs that agree on every resolved flag but seed, base model, paths and logging
knobs (NOT_SETTINGS), labelled by the flags that set it apart from its method's default run (config argv). A row's
value is the mean over its runs with a 95% percentile bootstrap interval (bootstrap(): 10,000 resamples, seed 0); one
row beats another only where the intervals separate (separated()). The covariance-law test (law_test()) asks, per run
and objective, whether (a) cov/<o> and (b) law/grad/<o> predict (c) law/probe/<o>, the realised change of the
objective on train.py's held-out probe set, in sign and in rank over steps. Runs that cannot be read (no log, empty,
garbled, unfinished) are skipped and listed.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

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


# -------------------- run logs ---------------------------------------------------------------------------------------
# Config keys that do not change what a run trains: its identity, paths, execution and the pure logging knobs (the
# covariance-law probe only measures). Runs that agree on every other key are one row; seeds and base models repeat it.
NOT_SETTINGS = {"seed", "out_dir", "model", "model_path", "argv", "resume", "overwrite", "resumed", "dry_run", "wandb",
                "device", "world_size", "eval_interval", "checkpoint_interval", "cov_interval", "law_interval",
                "probe_prompts", "probe_samples"}
SHORT = {"cov_targets": "targets", "lambda_lr": "λ"}  # CTWA's two settings, as labels name them
DEFAULT_MODEL = "arith-s0"  # arith.BASE_MODELS[0], train.py's model without --model (no arith import: logs only)


def settings(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in NOT_SETTINGS}


def base_model_name(config: dict) -> str:
    """The model a run started from: --model (a shipped arith model or a hub id), arith's default when unset, or the
    folder name when --model was a local folder."""
    model, path = config.get("model") or DEFAULT_MODEL, config.get("model_path")
    local = model == path or model.startswith((".", "/")) or model.count("/") > 1  # train.py's test for a path
    return os.path.basename(os.path.normpath(model)) if local else model


def run_args(argv):
    """train.py flags of a command line without --seed, --out-dir and --model (a row's runs share them); None for a
    run logged before train.py recorded its argv."""
    drop = ("--seed", "--out-dir", "--model")  # each as "--flag value" or "--flag=value"
    return None if argv is None else [t for i, t in enumerate(argv)
                                      if t.split("=")[0] not in drop and (i == 0 or argv[i - 1] not in drop)]


def load_run(run_dir: str) -> dict:
    """Read a train.py output folder: config.json and metrics.jsonl (the lines of one step merged, later wins).

    A half-written last line (the run is still writing) is dropped with a warning on stderr. A log that is missing,
    not JSON, empty, or ends before config["steps"] raises ValueError with a one-line reason (report() skips it)."""
    cfg_path, log_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.jsonl")
    for path in (cfg_path, log_path):
        if not os.path.isfile(path):
            raise ValueError(f"no {os.path.basename(path)}: not a train.py --out-dir folder, or the run never started")
    with open(cfg_path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"config.json is not JSON ({e})") from None
    if "method" not in config or "objectives" not in config:
        raise ValueError("config.json has no 'method' or 'objectives' (train.py writes both)")
    with open(log_path) as f:
        lines = [(i + 1, line) for i, line in enumerate(f) if line.strip()]
    by_step = {}
    for i, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i != lines[-1][0]:
                raise ValueError(f"metrics.jsonl line {i} is not JSON") from None
            print(f"warning: {log_path}: dropped the half-written last line {i} (still running?)", file=sys.stderr)
            continue
        if "step" not in row:
            raise ValueError(f"metrics.jsonl line {i} has no 'step' key: is it a train.py metrics.jsonl?")
        by_step.setdefault(int(row["step"]), {}).update(row)
    last = max(by_step, default=0)
    if last == 0:
        raise ValueError("metrics.jsonl " + ("holds no training step yet" if by_step else "is empty"))
    if last < (config.get("steps") or 0):
        raise ValueError(f"incomplete: its log ends at step {last} of {config['steps']} (still running, or stopped)")
    return dict(dir=run_dir, config=config, metrics=[by_step[s] for s in sorted(by_step)],
                objectives=list(config["objectives"]), seed=config.get("seed"), base_model=base_model_name(config))


def load_runs(run_dirs: list):
    """(runs, skipped): every folder through load_run, each unreadable one skipped as {dir, reason}. A path that is
    no folder at all is a typo, not a run: SystemExit."""
    runs, skipped = [], []
    for d in dict.fromkeys(map(os.path.normpath, run_dirs)):  # a folder passed twice counts once
        if not os.path.isdir(d):
            raise SystemExit(f"report.py: no such run folder: {d}")
        try:
            runs.append(load_run(d))
        except (OSError, ValueError) as e:  # ValueError includes a log that is not UTF-8 text
            skipped.append(dict(dir=d, reason=str(e)))
    return runs, skipped


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


# -------------------- covariance law on real runs --------------------------------------------------------------------
LAW_ZERO = 1e-9  # a realised change this small has no sign: such steps are left out of the sign agreement
LAW_STATS = ("sign_cov", "sign_grad", "rank_cov", "rank_grad")


def _ranks(v):
    """Ranks 0..n-1 of the values, tied values sharing their mean rank."""
    s = np.sort(v)
    return (np.searchsorted(s, v, "left") + np.searchsorted(s, v, "right") - 1) / 2


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson's of the ranks; nan below 3 points or for a constant series."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    return math.nan if len(rx) < 3 or rx.std() == 0 or ry.std() == 0 else float(np.corrcoef(rx, ry)[0, 1])


def law_test(metrics: list, objectives: list):
    """The covariance law on a run's log, per objective, over the steps that logged (c) law/probe/<o>, the realised
    change of the policy's probe-set reward: how often (a) cov/<o> (per-prompt Cov(r_o, clipped advantage weight))
    and (b) law/grad/<o> (<g_o, parameter step>, the first-order predicted change) have the sign of (c), over the
    steps with |c| > LAW_ZERO (`zero` counts the others), and their Spearman correlation with (c) over every step.
    None for a run that did not test the law (train.py --law-interval 0)."""
    out = {}
    for o in objectives:
        c = dict(zip(*_series(metrics, f"law/probe/{o}")))
        if not c:
            continue
        out[o] = dict(steps=len(c), zero=sum(abs(v) <= LAW_ZERO for v in c.values()))
        for name, key in (("cov", f"cov/{o}"), ("grad", f"law/grad/{o}")):
            x, y = np.array([(v, c[s]) for s, v in zip(*_series(metrics, key)) if s in c]).reshape(-1, 2).T
            signed = np.abs(y) > LAW_ZERO
            out[o][f"sign_{name}"] = float((np.sign(x) == np.sign(y))[signed].mean()) if signed.any() else math.nan
            out[o][f"rank_{name}"] = spearman(x, y)
    return out or None


# -------------------- summary across runs ----------------------------------------------------------------------------
RESAMPLES, LEVEL = 10_000, 0.95  # every interval of the summary


def bootstrap(values, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """Mean of the finite values and its percentile bootstrap interval: the (1 ± level) / 2 quantiles of the means of
    `resamples` resamples with replacement (a fixed seed, so tables are deterministic); std (ddof 1) and n besides."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return dict(mean=math.nan, low=math.nan, high=math.nan, std=math.nan, n=0)
    means = v[np.random.default_rng(seed).integers(0, len(v), (resamples, len(v)))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return dict(mean=float(v.mean()), low=float(low), high=float(high), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                n=len(v))


def separated(a: dict, b: dict) -> bool:
    """Whether two intervals ({low, high}) are disjoint: only then does the README call one method better."""
    return a["high"] < b["low"] or b["high"] < a["low"]


def compare(a: dict, b: dict, name: str) -> str:
    """Row a against row b on a final value: 'higher' or 'lower' where their intervals separate."""
    x, y = a["final"][name], b["final"][name]
    return ("higher" if x["mean"] > y["mean"] else "lower") if separated(x, y) else "no difference measured"


def summarize_run(run: dict, window: int = 10, threshold: float = 0.05) -> dict:
    """Base and final value of each objective and of response length, final-point hypervolume, interference, law."""
    m, objs = run["metrics"], run["objectives"]
    ends = {name: _endpoints(m, _curve_key(m, name), window) for name in objs + ["response_length"]}
    base, final = {n: e[0] for n, e in ends.items()}, {n: e[1] for n, e in ends.items()}
    if any(row["step"] == 0 and "eval/conciseness" in row for row in m):
        base["conciseness"] = math.nan  # step 0's conciseness is no baseline (see _series); Δ length stands in
    point = [final[o] for o in objs]
    return dict(dir=run["dir"], seed=run["seed"], base_model=run["base_model"], base=base, final=final,
                hypervolume=hypervolume([point]) if all(map(math.isfinite, point)) else math.nan,
                interference=detect_interference(m, objs, threshold, window), law=law_test(m, objs))


def _settings_key(run):
    return json.dumps(settings(run["config"]), sort_keys=True)


def group_runs(runs: list) -> dict:
    """Settings key -> the runs that agree on every setting (NOT_SETTINGS aside), in order of appearance."""
    groups = {}
    for run in runs:
        groups.setdefault(_settings_key(run), []).append(run)
    return groups


def _fmt(v):
    if isinstance(v, list):
        return "/".join(map(_fmt, v))
    if isinstance(v, bool) or v is None:
        return {True: "on", False: "off", None: "unset"}[v]
    return f"{v:g}" if isinstance(v, float) else str(v)


def _label(config, keys):
    method = config["method"]
    names = [SHORT.get(k.removeprefix(method + "_"), k.removeprefix(method + "_")).replace("_", " ") for k in keys]
    return method + (f" ({', '.join(f'{n} {_fmt(config.get(k))}' for n, k in zip(names, keys))})" if keys else "")


def label_groups(groups: dict) -> dict:
    """Settings key -> label: the method and the settings its runs' command line set (config argv); CTWA rows always
    name targets and λ. Rows that would share a label (logs without argv, or a default that changed between runs)
    also name every setting on which they differ."""
    keys = {}
    for key, runs in groups.items():
        config, own = runs[0]["config"], settings(runs[0]["config"])
        flags = [t[2:].split("=")[0].replace("-", "_") for t in config.get("argv") or [] if t.startswith("--")]
        flags = [f[3:] if f not in own and f.startswith("no_") else f for f in flags]  # --no-<flag>: a boolean off
        keys[key] = list(dict.fromkeys((["ctwa_cov_targets", "ctwa_lambda_lr"] if config["method"] == "ctwa" else [])
                                       + [f for f in flags if f in own and f != "method"]))
    labels = {key: _label(groups[key][0]["config"], k) for key, k in keys.items()}
    for label in set(labels.values()):
        same = [key for key in labels if labels[key] == label]
        if len(same) > 1:
            configs = [settings(groups[key][0]["config"]) for key in same]
            differ = [k for k in sorted(set().union(*configs)) if len({json.dumps(c.get(k)) for c in configs}) > 1]
            for key in same:
                labels[key] = _label(groups[key][0]["config"], keys[key] + [k for k in differ if k not in keys[key]])
    return labels


def _level(metrics):
    """Where the method acts, from what it logs: a score (reward level), coef/<obj> (gradient level), else advantage."""
    if any("score" in m for m in metrics):
        return "reward"
    return "gradient" if any(k.startswith("coef/") for m in metrics for k in m) else "advantage"


def _law_row(per, objectives):
    """law_test of a row's runs, per objective: runs, steps, steps with c ≈ 0, and each statistic's mean over runs
    with its bootstrap interval; None if no run tested the law."""
    out = {}
    for o in objectives:
        tests = [p["law"][o] for p in per if p["law"] and o in p["law"]]
        if tests:
            out[o] = dict(runs=len(tests), steps=sum(t["steps"] for t in tests), zero=sum(t["zero"] for t in tests),
                          **{s: bootstrap([t[s] for t in tests]) for s in LAW_STATS})
    return out or None


def summarize(groups: dict, labels: dict, window: int = 10, threshold: float = 0.05) -> list[dict]:
    """One row per group of runs (group_runs): final means over runs with bootstrap intervals, worst change from base,
    hypervolume, final accuracy per base model, and the covariance-law statistics."""
    rows = []
    for key, group in groups.items():
        config, objs = group[0]["config"], group[0]["objectives"]
        per = [summarize_run(r, window, threshold) for r in group]
        final = {n: bootstrap([p["final"][n] for p in per]) for n in objs + ["response_length"]}
        base = {n: float(np.mean([p["base"][n] for p in per])) for n in final}
        change = {o: final[o]["mean"] - base[o] for o in objs}
        worst = min((o for o in objs if math.isfinite(change[o])), key=change.get, default=objs[0])
        by_model = {b: [p for p in per if p["base_model"] == b] for b in dict.fromkeys(p["base_model"] for p in per)}
        rows.append(dict(
            label=labels[key], method=config["method"], level=_level(group[0]["metrics"]),
            args=run_args(config.get("argv")), objectives=objs, seeds=[p["seed"] for p in per],
            ctwa={k[5:]: v for k, v in config.items() if k.startswith("ctwa_")} if config["method"] == "ctwa" else None,
            runs=per, base=base, final=final, hypervolume=bootstrap([p["hypervolume"] for p in per]), change=change,
            worst_change=[worst, change[worst]],
            base_models={b: {"seeds": [p["seed"] for p in ps], objs[0]: bootstrap([p["final"][objs[0]] for p in ps])}
                         for b, ps in by_model.items()}, law=_law_row(per, objs)))
    return rows


def _md(head, lines):
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), *lines])


def _ci(s, fmt=".3f"):
    return "n/a" if not s["n"] else f"{s['mean']:{fmt}} [{s['low']:{fmt}}, {s['high']:{fmt}}]"


def markdown_table(rows: list) -> str:
    """The README results table, one line per row: mean [95% interval] over runs; response length shows its change
    from base in brackets."""
    objs, lines = rows[0]["objectives"], []
    for r in rows:
        flagged = [d["objective"] for p in r["runs"] for d in p["interference"]]
        inter = ", ".join(f"{o} {flagged.count(o)}/{len(r['runs'])}" for o in dict.fromkeys(flagged)) or "none"
        length, worst = r["final"]["response_length"], r["worst_change"]
        lines.append([r["label"], str(len(r["runs"])), *(_ci(r["final"][o]) for o in objs),
                      f"{_ci(length, '.1f')} ({length['mean'] - r['base']['response_length']:+.1f})",
                      f"{worst[0]} {worst[1]:+.3f}", _ci(r["hypervolume"]), inter])
    head = ["method", "runs", *objs, "response length (Δ)", "worst Δ vs base", "hypervolume", "interference (runs)"]
    return _md(head, lines)


def spread_table(rows: list) -> str:
    """Final value of the first objective per base model: mean ± std (ddof 1) over RL seeds, (runs)."""
    obj, models = rows[0]["objectives"][0], sorted({b for r in rows for b in r["base_models"]})
    cells = [[r["base_models"].get(b, {}).get(obj) for b in models] for r in rows]
    return _md(["method", *models], [[r["label"], *(f"{s['mean']:.3f} ± {s['std']:.3f} ({s['n']})" if s else ""
                                                    for s in line)] for r, line in zip(rows, cells)])


def law_table(rows: list) -> str:
    lines = [[r["label"], o, str(s["runs"]), f"{s['steps']} ({s['zero']})", *(_ci(s[k], ".2f") for k in LAW_STATS)]
             for r in rows if r["law"] for o, s in r["law"].items()]
    head = ["method", "objective", "runs", "steps (c ≈ 0)", "sign (a) = (c)", "sign (b) = (c)", "ρ(a, c)", "ρ(b, c)"]
    return _md(head, lines)


LAW_NOTE = ("(a) cov/<o>, per-prompt Cov(r_o, clipped advantage weight); (b) law/grad/<o>, <g_o, parameter step>; "
            "(c) law/probe/<o>, the realised change of the probe-set reward over the step. Sign agreement: fraction "
            f"of steps where (a) or (b) has the sign of (c), leaving out the steps with |c| <= {LAW_ZERO:g} (no sign; "
            "counted in brackets); ρ: Spearman rank correlation over steps. Mean over runs [95% bootstrap interval].")


def report(run_dirs: list, summary_dir: str, sweep_dirs=(), window: int = 10, threshold: float = 0.05) -> dict:
    """Summary of runs (and of a CTWA target sweep): prints markdown, writes summary.{md,json} (plots.py reads it).
    Unreadable runs are skipped and listed; no folder, no readable run or mixed objective lists: SystemExit."""
    (runs, skipped), (sweep, skipped_sweep) = load_runs(run_dirs), load_runs(sweep_dirs)
    skipped += [s for s in skipped_sweep if s not in skipped]
    if not runs:
        raise SystemExit(f"report.py: no readable run among the {len(run_dirs)} given: "
                         + "; ".join(f"{s['dir']}: {s['reason']}" for s in skipped))
    objs = runs[0]["objectives"]
    if any(r["objectives"] != objs for r in runs + sweep):
        raise SystemExit("report.py: the runs were trained on different objective lists; compare like with like")
    labels = label_groups(group_runs(runs + sweep))  # one label per setting across both tables
    rows = summarize(group_runs(runs), labels, window, threshold)
    points = [[r["final"][o]["mean"] for o in objs] for r in rows]  # (rows, K) final means
    for r, on_front in zip(rows, pareto_mask(points)):
        r["pareto"] = on_front
    out = dict(window=window, threshold=threshold, bootstrap=dict(resamples=RESAMPLES, level=LEVEL, seed=0),
               law_zero=LAW_ZERO, front_hypervolume=hypervolume(points), methods=rows, skipped=skipped)
    text = (f"Mean over runs [{LEVEL:.0%} percentile bootstrap interval, {RESAMPLES:,} resamples]; a row = the runs "
            "that share every setting but seed and base model.\n\n" + markdown_table(rows) +
            f"\n\nFinal {objs[0]} per base model: mean ± std over RL seeds (runs)\n\n" + spread_table(rows))
    reference = next((r for r in rows if r["label"] == "linear"), None)
    if reference and len(rows) > 1:
        names = objs + ["response_length"]
        lines = [[r["label"], *(compare(r, reference, n) for n in names)] for r in rows if r is not reference]
        text += ("\n\nAgainst linear: higher or lower where the 95% intervals separate\n\n" +
                 _md(["method", *objs, "response length"], lines))
    sweep = sweep or [r for r in runs if r["config"]["method"] == "ctwa"]
    if sweep:
        out["sweep"] = summarize(group_runs(sweep), labels, window, threshold)
        text += "\n\nCTWA covariance-target sweep\n\n" + markdown_table(out["sweep"])
    tested = list({r["label"]: r for r in out.get("sweep", []) + rows if r["law"]}.values())
    if tested:
        text += "\n\nCovariance law on real runs\n\n" + LAW_NOTE + "\n\n" + law_table(tested)
    text += "".join(f"\n\nskipped {s['dir']}: {s['reason']}" for s in skipped)
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
    parser.add_argument("--runs", nargs="+", required=True, help="train.py output folders to compare")
    parser.add_argument("--sweep", nargs="+", default=[], help="CTWA runs of a covariance-target sweep (Fig. 4)")
    parser.add_argument("--out", default="results", help="folder for summary.{md,json}")
    parser.add_argument("--window", type=int, default=10, help="steps averaged for base/final values and the detector")
    parser.add_argument("--threshold", type=float, default=0.05, help="detector: drop below the start that counts")
    args = parser.parse_args()
    report(args.runs, args.out, args.sweep, args.window, args.threshold)
