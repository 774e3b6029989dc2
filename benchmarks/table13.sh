#!/usr/bin/env bash
# The MedGemma technical report's Table 13 (its fine-tuning results), reproduced end to end from the raw
# downloads: each task's data prepared by data_prep, trained with its recipe, evaluated out-of-box and
# fine-tuned on the test split, then one table beside the report's figures (WORK_DIR/table13.md).
#
#   bash benchmarks/table13.sh RAW_ROOT [WORK_DIR] [-- section.key=value ...]
#
# RAW_ROOT holds each download as its publisher lays it out, in a folder named after its data_prep reader:
#   RAW_ROOT/crc100k     NCT-CRC-HE-100K/ and CRC-VAL-HE-7K/ (Zenodo 1214456)
#   RAW_ROOT/siim_acr    dicom-images-train/ and train-rle.csv (Kaggle SIIM-ACR)
#   RAW_ROOT/mimic_cxr   files/, the reports and the split/metadata CSVs (PhysioNet MIMIC-CXR-JPG)
# A missing folder skips its task. Overrides after `--` go to every run (e.g. model.name_or_path=tiny).
# METHOD=qlora picks the QLoRA recipes (default lora); LAUNCH sets how runs start, e.g.
#   LAUNCH="accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8"
# Prepared data and finished runs are kept in WORK_DIR (default table13-work): rerun to resume.
# The report task runs the IT model's recipe: the report measured it on medgemma-4b-pt, which
# recipes/report_generation/qlora-pt.yaml trains (the table says so).
set -euo pipefail
cd "$(dirname "$0")/.."
raw="${1:?usage: bash benchmarks/table13.sh RAW_ROOT [WORK_DIR] [-- section.key=value ...]}"; shift
work="table13-work"
if [[ $# -gt 0 && "$1" != "--" ]]; then work="$1"; shift; fi
[[ $# -gt 0 && "$1" == "--" ]] && shift
method="${METHOD:-lora}"
read -r -a launch <<< "${LAUNCH:-python}"

for pair in crc100k:tissue_classification siim_acr:pneumothorax mimic_cxr:report_generation; do
  reader="${pair%%:*}" task="${pair##*:}"
  if [[ ! -d "$raw/$reader" ]]; then echo "table13: $raw/$reader not found: $task skipped"; continue; fi
  recipe="recipes/$task/$method.yaml" data="$work/data/$reader" run="$work/runs/$task"
  if [[ ! -d "$data" ]]; then
    echo "table13: preparing $reader"
    python -m data_prep "$reader" --src "$raw/$reader" --out "$data" --recipe "$recipe"
  fi
  if [[ ! -f "$run/eval/finetuned.json" ]]; then
    echo "table13: training and evaluating $task ($recipe)"
    "${launch[@]}" medtune/train.py "$recipe" "data.path=$data" "training.output_dir=$run" \
      "training.resume_from_checkpoint=auto" "$@"
  fi
done
python benchmarks/table13.py "$work" | tee "$work/table13.md"
