#!/usr/bin/env bash
# Regenerates results/: every method x 3 seeds on the embedded arith task, a CTWA covariance-target sweep (paper
# Fig. 4), then the figures and the summary table with eval.py. About 30 minutes on an idle 2-core CPU (27 measured,
# from a fresh clone with an empty cache).
#     bash results/run.sh            # JOBS=2 runs at a time (one per core), runs in runs/, figures in results/
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-"0 1 2"}
methods=$(python -c "import scalarize; print(' '.join([*scalarize.METHODS, 'ctwa']))")
export OMP_NUM_THREADS=1  # the 0.2M-parameter model gains nothing from a second thread; two runs share two cores
unset TRITON_INTERPRET
python -c "import tasks; tasks.arith_base_model()"  # build the base model once, before the parallel runs

# order: every method once, then linear and ctwa on all seeds, the CTWA covariance-target sweep (paper Fig. 4),
# then the other seeds of the other methods, so that an interrupted run.sh leaves the most useful runs behind
jobs=()
add() { jobs+=("--method $1 --seed $2 --out-dir runs/$1-s$2"); }
first=${SEEDS%% *}
for m in $methods; do add "$m" "$first"; done
for s in $SEEDS; do [ "$s" = "$first" ] || { add linear "$s"; add ctwa "$s"; }; done
for t in "0.08 0.08 0.08" "0.15 0.15 0.15" "-0.08 -0.08 -0.08" "-0.15 -0.15 -0.15" "0.15 0.08 0.08" "0.5 0.08 0.08"; do
  jobs+=("--method ctwa --seed $first --ctwa-cov-targets $t --out-dir runs/sweep-${t// /_}")
done
for s in $SEEDS; do
  [ "$s" = "$first" ] && continue
  for m in $methods; do [ "$m" = linear ] || [ "$m" = ctwa ] || add "$m" "$s"; done
done
printf '%s\n' "${jobs[@]}" | xargs -P "$JOBS" -I{} sh -c 'out=$(echo "{}" | sed "s/.*--out-dir //");
  [ -d "$out/step-60" ] && exit 0; mkdir -p "$out"; python train.py {} > "$out.log" 2>&1 || echo "FAILED: {}"'

python eval.py --runs $(for m in $methods; do echo runs/$m-s*/; done) --sweep runs/sweep-*/ runs/ctwa-s0/ \
  --plots results > results/summary.txt
python eval.py --checkpoints "$(python -c 'import tasks; print(tasks.arith_base_model())')" \
  $(for m in $methods; do echo runs/$m-s0/step-60; done) --task arith --out results/checkpoints.json \
  >> results/summary.txt
cat results/summary.txt
