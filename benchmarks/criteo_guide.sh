#!/usr/bin/env bash
# The Criteo guide's figures (docs/guide/criteo.md): wall time and peak RSS of its three commands
# on a planted Criteo-format file, plus a short run with the full Kaggle cardinalities (the
# table memory a real train.txt gives). One torch thread: on a small or shared machine two threads
# wait for each other (the guide measured 15x fewer samples/s with them). Run from the repository
# root after `make test`:
#   bash benchmarks/criteo_guide.sh [WORKDIR] [LINES] [STEPS]
set -euo pipefail
W=${1:-runs/criteo-guide}
LINES=${2:-2000000}
STEPS=${3:-1500}
PY=.venv/bin/python
CE=.venv/bin/compemb
TIME=(/usr/bin/time -f "%e s wall, %U s user, %S s sys, peak RSS %M KiB")
mkdir -p "$W"
export OMP_NUM_THREADS=1
uptime
echo "== planted Criteo-format file, $LINES lines"
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path
from preprocess import write_criteo_file; write_criteo_file(Path(sys.argv[1]), int(sys.argv[2]))" \
    "$W/train.txt" "$LINES"
ls -l "$W/train.txt"
echo "== 1. preprocess"
rm -rf "$W/criteo"
"${TIME[@]}" "$CE" preprocess criteo "$W/train.txt" "$W/criteo"
echo "== 2. train ($STEPS steps of 128)"
rm -rf "$W/run"
"${TIME[@]}" "$CE" train --config configs/criteo-dlrm-qr.yaml --set "data.dataset=$W/criteo" \
    --set "train.max_steps=$STEPS" --out "$W/run" > "$W/run.json"
grep -E '"(samples_per_s|test_log_loss|steps|embedding_parameters)"' "$W/run.json" || true
echo "== 3. evaluate"
"${TIME[@]}" "$CE" evaluate "$W/run"
echo "== the full Kaggle cardinalities (tables as a real train.txt gives them)"
rm -rf "$W/synth-kaggle" "$W/run-kaggle"
"$CE" synth "$W/synth-kaggle" --rows 100000 --cardinalities criteo-kaggle --keep-cardinalities
"${TIME[@]}" "$CE" train --config configs/criteo-dlrm-qr.yaml \
    --set "data.dataset=$W/synth-kaggle" --set train.max_steps=300 --out "$W/run-kaggle" \
    > "$W/run-kaggle.json"
grep -E '"(samples_per_s|embedding_parameters)"' "$W/run-kaggle.json" || true
"${TIME[@]}" "$CE" evaluate "$W/run-kaggle"
ls -l "$W/run-kaggle"
uptime
