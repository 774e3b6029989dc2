"""The `medtune` command: prepare | train | sweep | bench | eval | export | inspect | compare | demo.

Heavy libraries load only once the arguments and the recipe are known to be good.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medtune import medsiglip  # light: what sets MedSigLIP recipes apart
from medtune.errors import MedtuneError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_RECIPE = REPO_ROOT / "recipes" / "demo" / "tissue_classification.yaml"


def _recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe YAML, e.g. recipes/tissue_classification/qlora.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.name_or_path=tiny")


def _served_arguments(parser: argparse.ArgumentParser) -> None:
    from medtune.served import DEFAULT_IN_FLIGHT, DEFAULT_RETRIES

    parser.add_argument("--served", metavar="URL", help="ask the model an OpenAI-compatible server serves (vLLM, "
                                                        "transformers serve, ...), e.g. http://localhost:8000")
    parser.add_argument("--served-model", metavar="NAME", help="the served model's name (default: the one the server "
                                                               "lists); with vLLM, a --lora-modules NAME for an "
                                                               "adapter")
    parser.add_argument("--requests-in-flight", type=int, default=DEFAULT_IN_FLIGHT,
                        help=f"requests sent at once (default {DEFAULT_IN_FLIGHT})")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help=f"retries of a request that timed out or failed (default {DEFAULT_RETRIES})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtune", description="Fine-tune MedGemma with LoRA/QLoRA recipes.")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="raw dataset -> DatasetDict (same as python -m data_prep)",
                                  add_help=False)
    prepare.add_argument("args", nargs=argparse.REMAINDER)

    train = commands.add_parser("train", help="train, evaluate base and adapter, export (one process; "
                                              "use `accelerate launch medtune/train.py` for several)")
    _recipe_arguments(train)

    sweep = commands.add_parser("sweep", help="a grid of training runs (key=a,b,c), one after another, and a table "
                                              "of their validation and test metrics")
    _recipe_arguments(sweep)
    sweep.add_argument("--launcher", help='how to start each run, e.g. "accelerate launch --config_file '
                                          'accelerate_configs/multi_gpu.yaml --num_processes 2" (default: python)')

    bench = commands.add_parser("bench", help="a benchmark suite (the model card's) on a base model and its adapters, "
                                              "beside the published figures", add_help=False)
    bench.add_argument("args", nargs=argparse.REMAINDER)

    evaluate = commands.add_parser("eval", help="evaluate a base model or an adapter on the recipe's eval split")
    _recipe_arguments(evaluate)
    evaluate.add_argument("--adapter", type=Path, help="an adapter folder (default: the base model alone)")
    evaluate.add_argument("--name", help="name of the result files (default: base, adapter or served)")
    _served_arguments(evaluate)

    export = commands.add_parser("export", help="write the model card; optionally merge and push to the Hub")
    export.add_argument("output_dir", type=Path, help="a training run's output_dir")
    export.add_argument("--merge", action="store_true", help="also write a merged full model to OUTPUT_DIR/merged")
    export.add_argument("--push", action="store_true", help="upload to the Hub (private unless --public)")
    export.add_argument("--repo-id", help="ORG/NAME on the Hub")
    export.add_argument("--public", action="store_true", help="make the Hub repository public")

    inspect = commands.add_parser("inspect", help="print one collated training example with loss tokens marked")
    _recipe_arguments(inspect)
    inspect.add_argument("--index", type=int, default=0, help="which train example")

    compare = commands.add_parser("compare", help="finished runs on the same test split in one table (MedGemma "
                                                  "out-of-box and fine-tuned, MedSigLIP zero-shot and probe)")
    compare.add_argument("runs", nargs="+", type=Path, help="run folders (each run's training.output_dir)")
    compare.add_argument("--out", type=Path, help="also write the table to this markdown file")

    demo = commands.add_parser("demo", help="the whole path offline on CPU: synthetic data -> prepare -> "
                                            "train the tiny model -> evaluate -> export")
    demo.add_argument("--workdir", type=Path, default=Path("medtune-demo"))
    demo.add_argument("--method", choices=["lora", "qlora"], default="lora")
    return parser


def _evaluate(args) -> None:
    from medtune import run_folder
    from medtune.comparison import unavailable_notes
    from medtune.config import load_recipe
    from medtune.data import load_split
    from medtune.evaluation import evaluate
    from medtune.model import load_model, load_processor, resolve_precision
    from medtune.rows import check_model_takes
    from medtune.tasks import task_for

    recipe = load_recipe(args.recipe, args.overrides)
    medsiglip.refuse_in(recipe, "eval")
    if args.adapter and not (args.adapter / "adapter_config.json").is_file():
        raise MedtuneError(f"--adapter {args.adapter} holds no adapter_config.json")
    # the processor: the served model's prompt (chat template) and, for option scoring, its tokens
    processor, dataset = load_processor(recipe), load_split(recipe, recipe.eval.split)
    check_model_takes(processor, dataset, recipe.model.name_or_path)
    if args.served:
        from medtune.served import connect_all

        (model,) = connect_all(args.served, [args.served_model] if args.served_model else [], processor,
                               [args.adapter] if args.adapter else [], args.requests_in_flight, args.retries)
        label = model.label
    else:
        model = load_model(recipe, resolve_precision(recipe.model.precision))
        label = recipe.model.name_or_path
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(args.adapter))
        label += f" + {args.adapter}"
    name = args.name or ("adapter" if args.adapter else "served" if args.served else "base")
    task = task_for(recipe.task)
    result = evaluate(model, processor, dataset, task, recipe.eval,
                      name=name, out_dir=run_folder.eval_dir(recipe.output_dir), model_label=label)
    if result:
        shown = {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}
        print(f"{name}: {shown}", *unavailable_notes(task, result), sep="\n")
        print(f"written to {run_folder.result_path(recipe.output_dir, name)}")


def _demo(args) -> None:
    from data_prep import get_reader
    from data_prep.__main__ import main as data_prep_main
    from medtune.config import load_recipe
    from medtune.train import run

    if not DEMO_RECIPE.is_file():
        raise MedtuneError(f"the demo recipe {DEMO_RECIPE} is missing: run the demo from a clone of the repository")
    raw, data, run_dir = args.workdir / "raw", args.workdir / "data", args.workdir / f"run-{args.method}"
    print(f"[1/4] synthetic NCT-CRC-HE-100K / CRC-VAL-HE-7K stand-in -> {raw}")
    if not raw.is_dir():
        get_reader("crc100k").synthesize(raw)
    print(f"[2/4] data_prep crc100k -> {data}")
    if data_prep_main(["crc100k", "--src", str(raw), "--out", str(data), "--overwrite"]) != 0:
        raise MedtuneError("data_prep failed (see above)")
    print(f"[3/4] {args.method} training of the tiny model, with out-of-box and fine-tuned evaluation")
    recipe = load_recipe(DEMO_RECIPE, [f"data.path={data}", f"training.output_dir={run_dir}",
                                       f"quantization.load_in_4bit={args.method == 'qlora'}"])
    table = run(recipe)
    print(f"[4/4] exported adapter, processor and model card: {run_dir}\n\n{table}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may follow options (`eval R --adapter A eval.mode=score`): collect the key=value words left over
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        if args.command == "prepare":
            from data_prep.__main__ import main as data_prep_main

            return data_prep_main(args.args)
        if args.command == "train":
            from medtune.train import main as train_main

            return train_main([args.recipe, *args.overrides])
        if args.command == "bench":
            from medtune.bench import main as bench_main

            return bench_main(args.args)
        if args.command == "sweep":
            from medtune.sweep import run_sweep

            print(run_sweep(Path(args.recipe), args.overrides, args.launcher))
        elif args.command == "eval":
            _evaluate(args)
        elif args.command == "export":
            from medtune.export import export

            export(args.output_dir, merge=args.merge, push=args.push, repo_id=args.repo_id, private=not args.public)
        elif args.command == "inspect":
            from medtune.config import load_recipe
            from medtune.inspect_batch import inspect_example

            recipe = load_recipe(args.recipe, args.overrides)
            medsiglip.refuse_in(recipe, "inspect")
            print(inspect_example(recipe, args.index))
        elif args.command == "compare":
            from medtune.compare import compare

            table = compare(args.runs)
            print(table)
            if args.out:
                args.out.write_text(table, encoding="utf-8")
        elif args.command == "demo":
            _demo(args)
    except MedtuneError as e:
        print(f"medtune: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
