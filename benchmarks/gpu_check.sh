#!/usr/bin/env bash
# Every CUDA path in one short GPU run (issue 34), the most important results first, each part under its own timeout:
#   preflight    the GPU, library versions, and every module the parts import (a missing one is named)
#   tiny-twins   tests/test_gpu.py: bf16 LoRA and 4-bit QLoRA steps, evaluation by generation and by scoring, pixels
#                normalised on the device, validation keeping the best checkpoint, the merge, MedSigLIP, text-only
#   real-shape   tests/test_gpu_real_shape.py: one step of each recipe at MedGemma 4B's shape (random weights) with its
#                peak memory; the scoring batch chosen from the free memory, run at that size
#   throughput   benchmarks/train_throughput.py: reference, medtune-lora, medtune-qlora, side by side
# then a summary to paste into BENCHMARKS.md ("GPU check"). The summary and every part's log are also written, as
# each part ends, to ${OUT:-/tmp}/gpu-check/ (the device tool brings $OUT back, even from a command cut short).
#
# Here: the wheels the GPU machine lacks, with the test runner's (`--dry-run` prints this line with the versions
# installed here), then what would run and a check that every file it needs is there:
#   EXTRA="pytest==... pluggy==... iniconfig==... pygments==... hypothesis==... sortedcontainers==..." \
#       bash ../shared/gpu/wheelhouse.sh
#   bash benchmarks/gpu_check.sh --dry-run
# There, from the repository root, with .gpu-wheels carried (what travels may hold 64 MiB in all; these wheels take
# about 61 and the checkout under 2 on 2026-12-06: keep large untracked files out of the checkout):
#   bash .gpu-wheels/on-gpu.sh bash benchmarks/gpu_check.sh
#
# About 7 minutes on an H100. The parts share GPU_CHECK_BUDGET_S seconds (default 420: with the wheels' install and
# the machine's start-up, inside 8 minutes); a part that would start with under a minute left is reported as not run.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
LOGS=${OUT:-/tmp}/gpu-check
# the 8.6 GB random checkpoint, written once and shared by the real-shape tests and the throughput rows
export MEDTUNE_GPU_WORKDIR=${MEDTUNE_GPU_WORKDIR:-/tmp/medtune-gpu-check}
TEST_WHEELS="pytest pluggy iniconfig pygments hypothesis sortedcontainers"  # the test runner; packaging is there
NEEDED=(tests/conftest.py tests/test_gpu.py tests/test_gpu_real_shape.py benchmarks/train_throughput.py
        benchmarks/medgemma_shapes.py recipes/tissue_classification/lora.yaml recipes/tissue_classification/qlora.yaml
        recipes/tissue_classification/medsiglip-probe.yaml recipes/tissue_classification/medsiglip-lora.yaml
        recipes/medqa/qlora-27b-text.yaml)
# pyproject's addopts run two pytest-xdist workers: one process here, with or without xdist installed
if "$PYTHON" -c "import xdist" 2>/dev/null; then PYTEST=(-n 0); else PYTEST=(-p no:xdist -o "addopts=-ra"); fi

# name | timeout (s) | command, in the order they run
PARTS=(
  "preflight|60|$PYTHON benchmarks/gpu_check_preflight.py"
  "tiny-twins|200|$PYTHON -m pytest tests/test_gpu.py -m gpu ${PYTEST[*]} -rA -q -s -p no:cacheprovider"
  "real-shape|200|$PYTHON -m pytest tests/test_gpu_real_shape.py -m gpu ${PYTEST[*]} -rA -q -s -p no:cacheprovider"
  "throughput|240|$PYTHON benchmarks/train_throughput.py --steps 4 --configs reference,medtune-lora,medtune-qlora --workdir $MEDTUNE_GPU_WORKDIR"
)

versions() {  # "name==version" of each installed package named
  "$PYTHON" - "$@" <<'EOF'
import importlib.metadata as m, sys
print(" ".join(f"{p}=={m.version(p)}" for p in sys.argv[1:]))
EOF
}

dry_run() {
  local problems=0
  echo "gpu_check --dry-run: on the GPU machine this runs, in order, within ${BUDGET} s (MEDTUNE_GPU_WORKDIR=$MEDTUNE_GPU_WORKDIR):"
  for part in "${PARTS[@]}"; do
    IFS='|' read -r name limit command <<< "$part"
    printf '  %-11s timeout %3s s: %s\n' "$name" "$limit" "$command"
  done
  for file in "${NEEDED[@]}" benchmarks/gpu_check_preflight.py; do
    [ -f "$file" ] || { echo "MISSING: $file"; problems=1; }
  done
  if [ "$problems" = 0 ]; then
    # the GPU tests must be collected (and, without CUDA, skipped: the CPU suite pays nothing for them)
    local collected
    collected=$("$PYTHON" -m pytest -m gpu --collect-only -q "${PYTEST[@]}" -p no:cacheprovider tests/test_gpu.py \
                tests/test_gpu_real_shape.py 2>&1)
    for file in tests/test_gpu.py tests/test_gpu_real_shape.py; do
      local n
      n=$(grep -c "^$file::" <<< "$collected")
      echo "  $file: $n GPU tests collected"
      [ "$n" -gt 0 ] || { echo "NOT COLLECTED: $file"; echo "$collected" | tail -20; problems=1; }
    done
    "$PYTHON" benchmarks/train_throughput.py --help > /dev/null || { echo "BROKEN: benchmarks/train_throughput.py --help"; problems=1; }
  fi
  echo "wheels: EXTRA=\"$(versions $TEST_WHEELS)\" bash ../shared/gpu/wheelhouse.sh"
  if [ -d .gpu-wheels ]; then
    for wheel in transformers trl peft datasets bitsandbytes $TEST_WHEELS; do
      ls .gpu-wheels/"${wheel//-/_}"-*.whl > /dev/null 2>&1 || echo "WARNING: no $wheel wheel in .gpu-wheels"
    done
    local carried
    carried=$( { git ls-files -z -co --exclude-standard; find .gpu-wheels -type f -print0; } \
               | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    echo "carried: the checkout and .gpu-wheels come to $((carried / 1048576)) MiB of the 64 MiB allowed"
    [ "$carried" -lt $((64 * 1048576)) ] || echo "WARNING: over 64 MiB: leave bitsandbytes out or clean the checkout"
  else
    echo "wheels: .gpu-wheels not built yet (the line above builds it)"
  fi
  [ "$problems" = 0 ] && echo "dry run: every file is there" || echo "dry run: something is missing (above)"
  return "$problems"
}

if [ "${1:-}" = "--dry-run" ]; then
  dry_run
  exit $?
fi

# ----------------------------------------------------------------------------- on the GPU machine
mkdir -p "$LOGS" "$MEDTUNE_GPU_WORKDIR"
summary=$LOGS/summary.md
results=$LOGS/results.md
: > "$results"

write_summary() {  # rewritten after every part, so that a command cut short still leaves what it found
  {
    echo "### GPU check, $(date -u +%Y-%m-%d)"
    echo
    grep -h -E '^(gpu|versions|missing):' "$LOGS/preflight.log" 2>/dev/null | sed 's/^/    /'
    echo
    echo "| part | result | seconds |"
    echo "|---|---|---|"
    cat "$results"
    echo
    grep -h -E '^(FAILED|ERROR) ' "$LOGS"/tiny-twins.log "$LOGS"/real-shape.log 2>/dev/null | cut -c1-300 | sed 's/^/    /'
    grep -h '^gpu-check |' "$LOGS"/tiny-twins.log "$LOGS"/real-shape.log 2>/dev/null | sed 's/^gpu-check | /    /'
    echo
    sed -n '/^date: /,$p' "$LOGS/throughput.log" 2>/dev/null
    grep -h ' failed:$' "$LOGS/throughput.log" 2>/dev/null
  } > "$summary"
}

for part in "${PARTS[@]}"; do
  IFS='|' read -r name limit command <<< "$part"
  left=$((BUDGET - SECONDS))
  if [ "$left" -lt 60 ]; then
    echo "| $name | not run: ${left} s of the budget left | |" >> "$results"
    write_summary
    continue
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (at most $limit s): $command"
  started=$SECONDS
  # shellcheck disable=SC2086  # the command is words
  timeout --kill-after=15 "$limit" $command > "$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) result=passed ;;
    124|137) result="timed out after $limit s" ;;
    *) result="failed (exit $rc)" ;;
  esac
  counts=$(grep -E '^=*.*[0-9]+ (passed|failed|skipped|error)' "$LOGS/$name.log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
  # tests that all skipped (CUDA not visible to them) checked nothing
  [ "$rc" = 0 ] && [ -n "$counts" ] && [[ $counts != *passed* ]] && result="nothing ran"
  echo "| $name | $result${counts:+: $counts} | $((SECONDS - started)) |" >> "$results"
  write_summary
  # what matters, as it comes: the part's verdict, its failures and figures (the whole log is in $LOGS)
  grep -E '^(gpu|versions|missing):|^(PASSED|FAILED|ERROR|SKIPPED) |^gpu-check \||^\||^- |failed:$' "$LOGS/$name.log" \
    | cut -c1-300
  echo "-- $name: $result${counts:+ ($counts)}, $((SECONDS - started)) s"
done

echo
echo "==================== summary (also in $summary) ===================="
cat "$summary"
