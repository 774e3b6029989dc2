"""How fast `medtune bench` runs the model card's suite: questions and generated tokens per second, per benchmark,
through the code `medtune bench` runs (medtune.bench.run_suite -> medtune.evaluation.evaluate: questions sorted by
prompt length, a row's questions together so that its image is encoded once, stop at the final answer, the KV cache).

    python benchmarks/bench_suite.py [--model tiny|real|scaled] [--max-new-tokens 32] [--limit 32] [--batch-size 16]

Every benchmark's stand-in (recipes/benchmarks/medgemma-card.yaml, its publisher's layout) is prepared by the suite's
own `prepare` command into --workdir, once. `--model tiny` is the tiny MedGemma-shaped twin (overheads, not
MedGemma); `real` is MedGemma 4B's architecture with random weights (benchmarks/medgemma_shapes.py; for a GPU),
`scaled` its CPU-sized shape. Random weights never write "Final Answer:", so every generation runs to
--max-new-tokens: the figure is the decoding rate at that length, which the arithmetic in BENCHMARKS.md turns into
the time of the whole public suite. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "real", "scaled"), default="tiny")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--limit", type=int, default=32, help="questions' rows a benchmark (a seeded sample)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medtune-bench-suite"))
    args = parser.parse_args()

    from medtune.bench import Variant, prepare_stand_ins, run_suite
    from medtune.config import build_recipe
    from medtune.model import load_model, load_processor, resolve_precision
    from medtune.suite import CARD_SUITE, load_suite

    suite = load_suite(CARD_SUITE, "suite")
    data_root = args.workdir / "data"
    prepare_stand_ins(suite, data_root, args.workdir / "raw")
    name_or_path = args.model
    if args.model != "tiny":
        from medgemma_shapes import write_checkpoint

        name_or_path = str(write_checkpoint(args.model, args.workdir / f"medgemma-{args.model}"))
    on_gpu = torch.cuda.is_available()
    recipe = build_recipe({"model": {"name_or_path": name_or_path, "precision": "auto"},
                           "quantization": {"load_in_4bit": False}, "tracking": {"backend": "none"},
                           "training": {"output_dir": str(args.workdir / "out")},
                           "eval": {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}})
    processor = load_processor(recipe)
    model = load_model(recipe, resolve_precision(recipe.model.precision))
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.processor() or 'cpu'}, " \
                                                         f"{torch.get_num_threads()} threads)"
    print(f"model {args.model}, {device}, batch {args.batch_size}, at most {args.max_new_tokens} new tokens, "
          f"{args.limit} rows a benchmark, torch {torch.__version__}")
    print("| benchmark | questions | generated tokens | seconds | questions/s | tokens/s |")
    print("|---|---|---|---|---|---|")
    totals = [0, 0, 0.0]
    out = args.workdir / "out"
    shutil.rmtree(out, ignore_errors=True)  # bench reads back what it measured before: measure anew
    for benchmark in suite.benchmarks:
        started = time.perf_counter()
        run_suite(model, processor, suite.only([benchmark.name]), data_root, out / benchmark.name,
                  [Variant("base", nullcontext, is_base=True)],
                  name_or_path, recipe.eval, args.limit)
        seconds = time.perf_counter() - started
        predictions = out / benchmark.name / "bench" / benchmark.name / "base_predictions.jsonl"
        records = [json.loads(line) for line in predictions.read_text().splitlines()]
        questions = sum(len(r["parsed"]) if isinstance(r["parsed"], list) else 1 for r in records)
        said = [r.get("generated") for r in records]  # a list where a row asks several questions; none when scored
        texts = [t for s in said if s for t in ([s] if isinstance(s, str) else s)] \
            if benchmark.mode == "generate" else []
        tokens = sum(len(processor.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        totals = [totals[0] + questions, totals[1] + tokens, totals[2] + seconds]
        print(f"| {benchmark.name} ({benchmark.mode}) | {questions} | {tokens:,} | {seconds:.1f} | "
              f"{questions / seconds:.2f} | {tokens / seconds:.0f} |", flush=True)
    print(f"| all | {totals[0]} | {totals[1]:,} | {totals[2]:.1f} | {totals[0] / totals[2]:.2f} | "
          f"{totals[1] / totals[2]:.0f} |")


if __name__ == "__main__":
    main()
