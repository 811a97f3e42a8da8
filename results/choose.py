"""Choose CTWA's arith settings on the VALIDATION split, never on the test split the results report.

    python report.py --runs runs/select-*/ --out results/selection           # the validation runs' summary
    python results/choose.py results/selection/summary.json                  # -> selection.md, selection.json

Criterion, fixed before looking at any result: the worst objective, min_k final_k (greedy, validation split, the
run's own conciseness threshold), averaged over the runs of a setting (one per shipped base model). It rewards a
setting that raises the easy objectives without letting the hard one (accuracy) collapse, which is what CTWA is for;
the mean over objectives would reward the collapse onto short, clear guesses. Ties (within 0.005) go to the setting
with the smaller spread over runs. Each signal (cov, grad) gets its own choice.
"""
import json
import os
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "results/selection/summary.json"
with open(path) as f:
    rows = json.load(f)["methods"]
scored = []
for row in rows:
    worst = [min(run["final"][o] for o in row["objectives"]) for run in row["runs"]]  # per run
    mean = sum(worst) / len(worst)
    spread = (sum((w - mean) ** 2 for w in worst) / max(len(worst) - 1, 1)) ** 0.5
    scored.append(dict(label=row["label"], args=row["args"], ctwa=row["ctwa"], runs=len(worst), criterion=mean,
                       spread=spread, final={o: row["final"][o]["mean"] for o in row["objectives"]}))
scored.sort(key=lambda r: (-round(r["criterion"] / 0.005), r["spread"]))
choice = {}
for r in scored:
    signal = r["ctwa"]["signal"] if r["ctwa"] else None
    if signal and signal not in choice:
        choice[signal] = {"label": r["label"], "cov_targets": r["ctwa"]["cov_targets"],
                          "lambda_lr": r["ctwa"]["lambda_lr"], "criterion": r["criterion"]}
lines = ["| setting | runs | worst objective (criterion) | spread over runs | accuracy | conciseness | clarity |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
lines += [f"| {r['label']} | {r['runs']} | {r['criterion']:.3f} | {r['spread']:.3f} | " +
          " | ".join(f"{v:.3f}" for v in r["final"].values()) + " |" for r in scored]
text = "Validation split, final greedy values; criterion = mean over runs of min_k final_k.\n\n" + "\n".join(lines)
text += "\n\nChosen: " + "; ".join(f"signal {s}: {c['label']}" for s, c in choice.items()) + "\n"
print(text)
out = os.path.dirname(path)
with open(os.path.join(out, "selection.md"), "w") as f:
    f.write(text)
with open(os.path.join(out, "selection.json"), "w") as f:
    json.dump({"criterion": "mean over runs of min_k final_k (validation split)", "rows": scored, "choice": choice},
              f, indent=1)
