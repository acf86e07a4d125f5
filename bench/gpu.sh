#!/usr/bin/env bash
# The GPU benchmarks in one go, about 8 minutes on one data-centre GPU:
#   1. bench/train_step.py --compile   the published K=5 step: straightforward, fast (bf16
#      autocast, fused Adam, cudnn.benchmark), memory saving, channels_last, torch.compile,
#      CUDA graphs; samples/s, peak memory, where the time goes
#   2. bench/inference.py              embed + restore of a 480x854 K=5 clip, batch 1
#   3. bench/precision.py              bf16 against float32 training, 100 steps of the
#      embedded default on the sample data, scored on held-out clips (a short convergence)
# Each writes its JSON into bench/results/ with the card named (machine.gpu). On a machine
# without a CUDA GPU it is a dry run: it says what it would measure and changes nothing.
#
#   bash bench/gpu.sh            # PY=.venv/bin/python by default
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

steps=(
  "270 train_step.py --device cuda --steps 5 --compile"
  "90 inference.py --device cuda --repeats 3"
  "120 precision.py --device cuda --steps 100"
)

probe='import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
read -r torch_version card < <("$PY" -c "$probe")
if [[ -z "$card" ]]; then
  echo "bench/gpu.sh: dry run, no CUDA GPU on this machine (torch $torch_version)."
  echo "On a GPU it would run, each under its time limit:"
  for s in "${steps[@]}"; do
    read -r limit cmd <<<"$s"
    echo "  timeout ${limit}s $PY bench/$cmd"
  done
  "$PY" bench/precision.py --device cuda --steps 100
  echo "and write bench/results/train_step-cuda.json, inference-cuda.json, precision-cuda.json."
  exit 0
fi

echo "bench/gpu.sh on $card"
echo "torch $torch_version"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
began=$SECONDS
status=0
for s in "${steps[@]}"; do
  read -r limit cmd <<<"$s"
  echo "== bench/$cmd (limit ${limit}s, $((SECONDS - began)) s so far)"
  # shellcheck disable=SC2086  # cmd is a command line of plain words
  timeout "$limit" "$PY" bench/$cmd || { echo "bench/$cmd failed (exit $?)"; status=1; }
done
echo "bench/gpu.sh: done in $((SECONDS - began)) s on $card; results in bench/results/*-cuda.json"
exit $status
