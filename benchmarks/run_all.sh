#!/usr/bin/env bash
# Every benchmark behind BENCHMARKS.md, in one command (about 15 minutes on 2 CPU cores; on a GPU the
# training rows use MedGemma 4B's real shape):
#   bash benchmarks/run_all.sh [OUT.md]
# Writes the outputs, with the machine and date each prints, to OUT.md (default benchmarks/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results.md}"
{
  echo "# medtune benchmarks, $(date -u +%Y-%m-%d), $(hostname)"
  echo; echo "## Training: reference notebook vs medtune (python benchmarks/train_throughput.py)"; echo
  python benchmarks/train_throughput.py 2>/dev/null
  echo; echo "## Evaluation's input pipeline (python benchmarks/input_pipeline.py)"; echo
  python benchmarks/input_pipeline.py 2>/dev/null
  echo; echo "## Evaluation: generation vs option scoring (python benchmarks/eval_modes.py)"; echo
  python benchmarks/eval_modes.py 2>/dev/null
  echo; echo "## The vision tower's attention: eager vs SDPA (python benchmarks/vision_attention.py)"; echo
  python benchmarks/vision_attention.py 2>/dev/null
  echo; echo "## data_prep: MIMIC-CXR image preparation (python benchmarks/image_prep.py)"; echo
  python benchmarks/image_prep.py 2>/dev/null
  echo; echo "## MedSigLIP image embeddings (python benchmarks/encoder_embeddings.py)"; echo
  python benchmarks/encoder_embeddings.py 2>/dev/null
  echo; echo "## Chest X-ray findings: packed vs separate rows (python benchmarks/findings_training.py)"; echo
  for way in packed rows rows-together; do python benchmarks/findings_training.py --images 2 --steps 3 --ways "$way" 2>/dev/null; done
  echo; echo "## The model card's suite (python benchmarks/bench_suite.py)"; echo
  python benchmarks/bench_suite.py 2>/dev/null
  echo; echo "## GRPO: rollouts and optimizer steps (python benchmarks/grpo_rollouts.py)"; echo
  python benchmarks/grpo_rollouts.py 2>/dev/null
  echo; echo "## Served evaluation vs in-process generation (python benchmarks/served_eval.py)"; echo
  python benchmarks/served_eval.py 2>/dev/null
  # vLLM: bash benchmarks/serve_vllm.sh (its own 5 GB environment: not run here)
} | tee "$out"
