#!/usr/bin/env bash
# Regenerates results/: every method x 3 seeds on the embedded arith task from the shipped base model, a CTWA
# covariance-target sweep (paper Fig. 4), then the summary table with eval.py and the figures with plots.py. About 30
# minutes on an idle 2-core CPU (27 measured from a fresh clone, when it also built the base model).
#     bash results/run.sh            # JOBS=2 runs at a time (one per core), runs in runs/, figures in results/
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-"0 1 2"}
BASE=${BASE:-arith-s0}  # a shipped base model: one of arith.BASE_MODELS, a folder in base_models/
methods=$(python -c "import scalarize; print(' '.join([*scalarize.METHODS, 'ctwa']))")
export OMP_NUM_THREADS=1  # the 0.2M-parameter model gains nothing from a second thread; two runs share two cores
unset TRITON_INTERPRET

# order: every method once, then linear and ctwa on all seeds, the CTWA covariance-target sweep (paper Fig. 4),
# then the other seeds of the other methods, so that an interrupted run.sh leaves the most useful runs behind
jobs=()
add() { jobs+=("--method $1 --seed $2 --model $BASE --out-dir runs/$1-s$2"); }
first=${SEEDS%% *}
for m in $methods; do add "$m" "$first"; done
for s in $SEEDS; do [ "$s" = "$first" ] || { add linear "$s"; add ctwa "$s"; }; done
for t in "0.08 0.08 0.08" "0.15 0.15 0.15" "-0.08 -0.08 -0.08" "-0.15 -0.15 -0.15" "0.15 0.08 0.08" "0.5 0.08 0.08"; do
  jobs+=("--method ctwa --seed $first --model $BASE --ctwa-cov-targets $t --out-dir runs/sweep-${t// /_}")
done
for s in $SEEDS; do
  [ "$s" = "$first" ] && continue
  for m in $methods; do [ "$m" = linear ] || [ "$m" = ctwa ] || add "$m" "$s"; done
done
printf '%s\n' "${jobs[@]}" | xargs -P "$JOBS" -I{} sh -c 'out=$(echo "{}" | sed "s/.*--out-dir //");
  [ -d "$out/step-60" ] && exit 0; mkdir -p "$out"; python train.py {} > "$out.log" 2>&1 || echo "FAILED: {}"'

python eval.py --runs $(for m in $methods; do echo runs/$m-s*/; done) --sweep runs/sweep-*/ runs/ctwa-s0/ \
  --summary-dir results > results/summary.txt
python plots.py --summary results/summary.json --out results
python eval.py --checkpoints "base_models/$BASE" $(for m in $methods; do echo runs/$m-s0/step-60; done) --task arith \
  --out results/checkpoints.json >> results/summary.txt
cat results/summary.txt
