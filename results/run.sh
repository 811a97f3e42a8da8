#!/usr/bin/env bash
# Regenerates results/ on the embedded arith task (JOBS runs at a time, one per core). The committed results/ came
# from this default (3 RL seeds, 245 runs): 2 h 5 min on 2 cores:
#   1. selection/  CTWA's targets and lambda, and those of its gradient-signal variant, chosen on the VALIDATION split
#                  (results/choose.py says the criterion); train.py's arith defaults must be the cov choice
#   2. the grid    every method x 3 shipped base models x 3 RL seeds on the test split, the covariance law's
#                  statistics logged every step; plus CTWA exactly as the paper ran it, and CTWA on the gradient signal
#   3. the sweep   CTWA's covariance targets at the paper's lambda and at the chosen one (paper Fig. 4), arith-s0
#   4. report.py   the table (means, 95% bootstrap intervals, spread per base model, the law test), plots.py and
#                  eval.py (the seed-0 checkpoints)
#     bash results/run.sh            # runs in runs/, summaries and figures in results/; finished runs are skipped
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-"0 1 2"}
BASES=${BASES:-"arith-s0 arith-s1 arith-s2"}
export OMP_NUM_THREADS=1  # the 0.2M-parameter model gains nothing from a second thread; two runs share two cores
unset TRITON_INTERPRET
run_all() {  # one train.py per line of flags on stdin, JOBS at a time; a finished run (its step-60) is skipped,
  # an unfinished one started again from scratch
  xargs -P "$JOBS" -I{} sh -c 'out=$(echo "{}" | sed "s/.*--out-dir //"); [ -d "$out/step-60" ] && exit 0;
    rm -rf "$out"; python train.py {} > "$out.log" 2>&1 || echo "FAILED: {}"'
}

# 1. selection on the validation split, one run per base model and setting, no law statistics (not needed there)
{
  for b in $BASES; do
    for lam in 0.05 0.2 0.5; do for c0 in 0.15 0.2 0.25 0.3 0.4 0.5; do
      echo "--method ctwa --model $b --ctwa-cov-targets $c0 0.08 0.08 --ctwa-lambda-lr $lam --eval-split val" \
           "--law-interval 0 --out-dir runs/select-cov-$c0-$lam-$b"
    done; done
    for lam in 0.2 0.5; do for c0 in 0.1 0.2 0.3 0.4; do
      echo "--method ctwa --ctwa-signal grad --model $b --ctwa-cov-targets $c0 0.05 0.05 --ctwa-lambda-lr $lam" \
           "--eval-split val --law-interval 0 --out-dir runs/select-grad-$c0-$lam-$b"
    done; done
  done
} | run_all
python report.py --runs runs/select-*/ --out results/selection > /dev/null
python results/choose.py results/selection/summary.json
choice() { python -c "import json; c = json.load(open('results/selection/selection.json'))['choice']['$1'];
print(' '.join(map(str, c['cov_targets'])), c['lambda_lr'])"; }
read -r -a cov <<< "$(choice cov)"
read -r -a grad <<< "$(choice grad)"
defaults=$(python train.py --dry-run | python -c "import json, sys; c = json.load(sys.stdin);
print(' '.join(map(str, c['ctwa_cov_targets'])), c['ctwa_lambda_lr'])")
[ "${cov[*]}" = "$defaults" ] || echo "WARNING: validation chose CTWA ${cov[*]}, but train.py's arith default is" \
  "$defaults: update TASK_DEFAULTS in train.py, then rerun"

# 2. the grid, seed-major, so that an interrupted run.sh leaves whole seeds behind
methods=$(python -c "import scalarize; print(' '.join([*scalarize.METHODS, 'ctwa']))")
{
  for s in $SEEDS; do for b in $BASES; do
    for m in $methods; do echo "--method $m --model $b --seed $s --out-dir runs/$m-$b-s$s"; done
    echo "--method ctwa --ctwa-cov-targets 0.15 0.08 0.08 --ctwa-lambda-lr 0.05 --model $b --seed $s" \
         "--out-dir runs/ctwa_paper-$b-s$s"
    echo "--method ctwa --ctwa-signal grad --ctwa-cov-targets ${grad[*]:0:3} --ctwa-lambda-lr ${grad[3]}" \
         "--model $b --seed $s --out-dir runs/ctwa_grad-$b-s$s"
  done; done
} | run_all

# 3. the covariance-target sweep (paper Fig. 4) at the paper's lambda and at the chosen one
{
  for lam in 0.05 "${cov[3]}"; do
    for t in "0.08 0.08 0.08" "0.15 0.15 0.15" "-0.08 -0.08 -0.08" "-0.15 -0.15 -0.15" "0.15 0.08 0.08" \
             "0.3 0.08 0.08" "0.5 0.08 0.08"; do
      echo "--method ctwa --model arith-s0 --ctwa-cov-targets $t --ctwa-lambda-lr $lam --law-interval 0" \
           "--out-dir runs/sweep-${t// /_}-l$lam"
    done
  done
} | run_all

# 4. tables and figures
rows=$(for m in $methods ctwa_paper ctwa_grad; do echo runs/$m-arith-s*/; done)
python report.py --runs $rows --sweep runs/sweep-*/ --out results > results/summary.txt
python plots.py --summary results/summary.json --out results
python eval.py --checkpoints base_models/arith-s0 $(for m in $methods; do echo runs/$m-arith-s0-s0/step-60; done) \
  --task arith --out results/checkpoints.json >> results/summary.txt
cat results/summary.txt
