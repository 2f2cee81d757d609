#!/usr/bin/env bash
# Longer runs of the randomized point-in-time workload (tests/it/pitr_random.rs):
# every seed in FIRST..LAST with STEPS steps each. A failure prints the seed
# and the workload's SQL; rerun one with
#   PGKEEP_PITR_SEED=<seed> PGKEEP_PITR_STEPS=<steps> cargo test --locked --test it pitr_random:: -- --nocapture
# Usage: scripts/pitr-random.sh [FIRST [LAST [STEPS]]]   (defaults: 1 20 60)
set -euo pipefail
first=${1:-1}
last=${2:-20}
steps=${3:-60}
cargo test --locked --test it --no-run
for seed in $(seq "$first" "$last"); do
    echo "== seed $seed, $steps steps"
    PGKEEP_PITR_SEED=$seed PGKEEP_PITR_STEPS=$steps cargo test --locked --test it pitr_random:: -- --nocapture 2>&1 | tail -n 40
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "seed $seed failed"; exit 1; }
done
echo "all seeds passed"
