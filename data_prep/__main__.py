"""`python -m data_prep DATASET --src RAW --out DIR` and `python -m data_prep synthetic DATASET --out RAW`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep import dataset_names, get_reader
from data_prep._common import PrepError
from medtune.tasks import data_prep_readers, task_names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in dataset_names():
        reader = get_reader(name)
        sub = commands.add_parser(name, help=(reader.__doc__ or "").strip().splitlines()[0])
        sub.add_argument("--src", type=Path, required=True, help="the raw download, as the publisher lays it out")
        sub.add_argument("--out", type=Path, required=True, help="where to write the DatasetDict")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        sub.add_argument("--recipe", type=Path,
                         help="take the split options (data.seed, data.test_fraction) and, for your own data, the "
                              "task (task.name, .question, .options) from this recipe, so that training and data agree")
        reader.add_arguments(sub)
    synthetic = commands.add_parser("synthetic", help="write a small synthetic stand-in in a dataset's raw layout")
    synthetic.add_argument("name", choices=dataset_names())
    synthetic.add_argument("--out", type=Path, required=True)
    synthetic.add_argument("--seed", type=int, default=0)
    return parser


SPLIT_OPTIONS = ("seed", "test_fraction")  # recipe data.* keys that shape the splits data_prep makes


def apply_recipe_options(args: argparse.Namespace) -> None:
    """The recipe's split options, and for the readers of your own data its task: the task's name, question and
    option texts, which the prompts are written with."""
    from medtune.config import load_yaml  # the recipe loader: `2e-1` is a float there too

    if not args.recipe.is_file():
        raise PrepError(f"--recipe {args.recipe} not found")
    recipe = load_yaml(args.recipe.read_text(encoding="utf-8")) or {}
    data, task = recipe.get("data") or {}, recipe.get("task") or {}
    for key in SPLIT_OPTIONS:
        if data.get(key) is not None and hasattr(args, key):
            setattr(args, key, data[key])
    if task.get("protocol") is not None and hasattr(args, "protocol"):  # a reader that writes several protocols
        args.protocol = task["protocol"]
    if not hasattr(args, "question"):  # a reader of a built-in dataset: its task's prompts are fixed
        return
    tasks = [name for name in task_names() if args.dataset in data_prep_readers(name)]
    if task.get("name") not in tasks:
        raise PrepError(f"--recipe {args.recipe}: task.name is {task.get('name')!r}, but {args.dataset} prepares "
                        f"data for {' or '.join(tasks)}")
    if hasattr(args, "task"):
        args.task = task["name"]
    if task.get("question") is not None and args.question is None:
        args.question = task["question"]
    if not isinstance(task.get("options") or {}, dict):
        raise PrepError(f"--recipe {args.recipe}: task.options must map each class to its option text")
    args.option = [*(f"{name}={text}" for name, text in (task.get("options") or {}).items()), *args.option]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.dataset == "synthetic":
            get_reader(args.name).synthesize(args.out, seed=args.seed)
            print(f"wrote a synthetic {args.name} stand-in to {args.out}")
            return 0
        if args.recipe:
            apply_recipe_options(args)
        kind = getattr(get_reader(args.dataset), "SOURCE_KIND", "folder")  # file, folder, or any (a Hub id too)
        if kind == "file" and not args.src.is_file():
            raise PrepError(f"--src {args.src} is not a file")
        if kind == "folder" and not args.src.is_dir():
            raise PrepError(f"--src {args.src} is not a folder")
        report = get_reader(args.dataset).prepare(args.src, args.out, args)
    except PrepError as e:
        print(f"data_prep: {e}", *(e.report.why_skipped() if e.report else []), sep="\n", file=sys.stderr)
        return 2
    print(report.summary())
    if report.in_clear:
        print("skipped (prep_report.json names these by keyed hash: their paths hold identifiers):",
              *report.in_clear, sep="\n", file=sys.stderr)
    if report.skipped:
        print(f"skipped files are listed in {args.out / 'prep_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
