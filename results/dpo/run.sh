#!/usr/bin/env bash
# The weight sweep of README "Reward-free alignment: DPO per objective": per-objective DPO on the arith
# accuracy-vs-conciseness slice, combined by linear, CAGrad and RACO, 4 preference weights x 3 seeds (36 runs of
# `python dpo.py` defaults otherwise), then greedy test-split scores with eval.py and the table and figure.
# About 30 minutes on one core (one run at a time).
#     bash results/dpo/run.sh          # runs in runs/dpo/, outputs in results/dpo/
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-"0 1 2"}
WEIGHTS=${WEIGHTS:-"0.2 0.5 0.8 0.95"}  # the weight on accuracy; conciseness gets the rest
export OMP_NUM_THREADS=1  # the 0.2M-parameter model gains nothing from a second thread
unset TRITON_INTERPRET
mkdir -p runs/dpo
for s in $SEEDS; do
  for w in $WEIGHTS; do
    for m in linear cagrad raco; do
      out=runs/dpo/$m-w$w-s$s
      [ -d "$out/step-100" ] && continue
      python dpo.py --method "$m" --objectives accuracy conciseness --weights "$w" "$(awk "BEGIN {print 1 - $w}")" \
        --seed "$s" --out-dir "$out" > "$out.log" 2>&1 || echo "FAILED: $out"
    done
  done
done
# conciseness against one fixed length: the base model's sampled mean on the test split (its scores.json)
threshold=$(python -c "import json; print(json.load(open('base_models/arith-s0/scores.json'))['sampled']['length_threshold'])")
python eval.py --checkpoints base_models/arith-s0 runs/dpo/*/step-100 --task arith --length-threshold "$threshold" \
  --out results/dpo/eval.json > results/dpo/eval.md
python results/dpo/sweep.py --eval results/dpo/eval.json --out results/dpo
