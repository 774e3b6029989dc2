"""Your own table of examples (CSV, JSON lines or Parquet), for the `classification` or `free_text` task.

One row per example; the column names are flags (defaults in brackets):

    image     [image]     the image's path, relative to the table's folder (or --image-root); any image Pillow
                          reads, or a DICOM. A path that leads outside that folder (`../`, absolute) is refused
    label     [label]     a class name (classification), or
    answer    [answer]    a free-text answer (free_text)
    question  [question]  optional, free_text: the row's own question (else --question or task.question)
    split     [split]     optional: train, validation or test (val, valid, dev too); missing splits drawn from train
    group     (none)      optional, --group-column: e.g. a patient id, stored as a keyed hash; no group in two splits
    id        (none)      optional, --id-column: the example's id (else its row number); --hash-ids stores it hashed

The task is classification when the table has the label column, else free_text (--task, or the recipe's
task.name, chooses). Malformed rows, missing or unreadable images, empty labels or answers and unknown splits
are skipped, counted and listed in prep_report.json by row number.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from data_prep import _own_data
from data_prep._common import (PrepError, PrepReport, build_split, conversation, conversation_features, group_by,
                               hashed_id, id_key, save_dataset, staged_output)
from medtune.tasks import get_task

SOURCE_IS_FILE = True  # --src is the table, not a folder
SUFFIXES = (".csv", ".jsonl", ".parquet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _own_data.add_arguments(parser)
    parser.add_argument("--task", choices=("classification", "free_text"), default=None,
                        help="default: classification when the table has the label column, else free_text")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="the folder image paths are relative to (default: the table's); none may lead outside it")
    for column, default in (("image", "image"), ("label", "label"), ("answer", "answer"), ("question", "question"),
                            ("split", "split"), ("group", None), ("id", None)):
        parser.add_argument(f"--{column}-column", default=default, metavar="NAME")
    parser.add_argument("--hash-ids", action="store_true", help="store and report the id column as keyed hashes")


# ----------------------------------------------------------------------------- reading the table
def read_rows(path: Path, report: PrepReport) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for each well-formed row; `where` is `table.csv:LINE`. Malformed rows are skipped."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.DictReader(f)
            width = len(reader.fieldnames or [])
            for row in reader:
                where = f"{path.name}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):  # too many fields, or too few
                    fields = width + len(row.get(None) or []) - sum(v is None for v in row.values())
                    report.skip(where, f"malformed CSV row: {fields} fields, the header has {width}")
                    continue
                yield where, row
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except ValueError:
                    row = None
                if not isinstance(row, dict):
                    report.skip(f"{path.name}:{line}", "malformed JSON line: not an object")
                    continue
                yield f"{path.name}:{line}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a broken file
            raise PrepError(f"{path.name} is not a readable Parquet file: {e}") from None
        for index, row in enumerate(rows):
            yield f"{path.name}:row {index}", row
    else:
        raise PrepError(f"--src {path.name}: a table is a {', '.join(SUFFIXES)} file")


def _text(row: dict[str, Any], column: str | None) -> str:
    value = row.get(column) if column else None
    return "" if value is None else str(value).strip()


def safe_image_path(relative: str, root: Path, series: bool = False) -> tuple[Path | None, str | None]:
    """The image's path under `root`, or (None, reason): a shared table must not make the reader open any file
    on the machine, so an absolute path, or one that leads out of `root` (`../`, a link), is refused."""
    if not relative:
        return None, "no image path"
    if Path(relative).is_absolute() or relative.startswith(("\\", "~")) or ":" in Path(relative).parts[0]:
        return None, "image path refused: absolute (paths are relative to the table's folder or --image-root)"
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        return None, "image path refused: it leads outside the table's folder (or --image-root)"
    if series and path.is_dir():  # --series-slices: the folder of a series' slice DICOMs
        return path, None
    if not path.is_file():
        return None, "image not found" + (" (nor a series folder)" if series else "")
    return path, None


# ----------------------------------------------------------------------------- prepare
def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    from datasets import ClassLabel, Value

    report = PrepReport(dataset="table", source=str(src), options=_own_data.split_options(args), hash_key=id_key())
    key, root = report.hash_key, (args.image_root or src.parent)
    rows = list(read_rows(src, report))
    if not rows:
        raise PrepError(f"{src.name} has no readable row")
    columns = set().union(*(row.keys() for _, row in rows))
    task_name = args.task or ("classification" if args.label_column in columns else "free_text")
    target = args.label_column if task_name == "classification" else args.answer_column
    for column, flag in ((args.image_column, "image"), (target, target_flag(task_name))):
        if column not in columns:
            raise PrepError(f"{src.name} has no column {column!r} (it has {', '.join(sorted(columns))}): "
                            f"name it with --{flag}-column")
    examples = _examples(rows, root, args, target, report)
    if task_name == "classification":
        classes = sorted({e["target"] for e in examples})
        task, report.task = _own_data.classification_task(classes, args)

        def conversation_of(example: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
            label = classes.index(example["target"])
            return task.prompt(), task.answer(label), {"label": label}
    else:
        classes, task = [], get_task("free_text", args.question, None)
        report.task = {"name": task.name, "question": task.question}

        def conversation_of(example: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
            return task.prompt(example["question"]), task.answer(example["target"]), {}

    def generate(items: list[dict[str, Any]], split: str):
        def rows_of_split():
            for example in tqdm(items, desc=f"reading {split}", unit="img", mininterval=1.0):
                image, problem = _own_data.read_example(example["path"], args)
                if problem:
                    report.skip(example["where"], problem)
                    continue
                if image["dicom_how"]:
                    hows.append(image["dicom_how"])
                prompt, answer, label = conversation_of(example)
                yield {"id": example["id"], "group": example["group"], **_own_data.image_columns(image["images"], args),
                       "messages": conversation(prompt, answer, images=len(image["images"])), "answer": answer,
                       **label}
        return rows_of_split

    def row_id(example: dict[str, Any]) -> str:
        return hashed_id(example["id"], key) if args.hash_ids else example["id"]

    for example in examples:
        example["id"] = row_id(example)
        example["group"] = hashed_id(example["group"], key) if example["group"] is not None else example["id"]
    examples = _keep_groups_in_one_split(examples, report)
    hows: list[str] = []
    extra = {"group": Value("string")}
    if task_name == "classification":
        extra["label"] = ClassLabel(names=classes)
    features = conversation_features(extra, images=_own_data.image_layout(args))
    with staged_output(out, args.overwrite) as staging:
        built = {split: build_split(generate(items, split), features, staging, split)
                 for split, items in sorted(group_by(examples, lambda e: e["split"]).items())}
        dataset_dict = _own_data.complete_splits(built, args, report, "group")
        _own_data.note_dicom_handling(report, hows)
        save_dataset(dataset_dict, report, staging, classes or None,
                     count_by="label" if task_name == "classification" else None)
    return report


def target_flag(task_name: str) -> str:
    return "label" if task_name == "classification" else "answer"


def _examples(rows: list[tuple[str, dict[str, Any]]], root: Path, args: argparse.Namespace, target: str,
              report: PrepReport) -> list[dict[str, Any]]:
    """The rows that name an image inside the root, a target and a known split; the others are skipped."""
    examples = []
    for index, (where, row) in enumerate(rows):
        path, problem = safe_image_path(_text(row, args.image_column), root, bool(args.series_slices))
        value, split = _text(row, target), _text(row, args.split_column).lower()
        if problem is None and not value:
            problem = f"empty {target}"
        if problem is None and split and split not in _own_data.SPLIT_NAMES:
            problem = f"unknown split {split[:20]!r} (train, validation or test)"
        if problem:
            report.skip(where, problem)
            continue
        examples.append({"where": where, "path": path, "target": value, "question": _text(row, args.question_column),
                         "split": _own_data.SPLIT_NAMES.get(split, "pool"),
                         "id": _text(row, args.id_column) or f"row-{index}",
                         "group": _text(row, args.group_column) or None})
    if any(e["split"] != "pool" for e in examples) and any(e["split"] == "pool" for e in examples):
        for example in [e for e in examples if e["split"] == "pool"]:
            report.skip(example["where"], "no split, where other rows have one")
        examples = [e for e in examples if e["split"] != "pool"]
    return examples


def _keep_groups_in_one_split(examples: list[dict[str, Any]], report: PrepReport) -> list[dict[str, Any]]:
    """A group (patient) the table puts in several splits stays in the one holding most of its rows; its rows in
    the others are skipped, so that no split tests on a patient it trained on."""
    home = {group: Counter(e["split"] for e in members).most_common(1)[0][0]
            for group, members in group_by(examples, lambda e: e["group"]).items()}
    kept = []
    for example in examples:
        if example["split"] == home[example["group"]]:
            kept.append(example)
        else:
            report.skip(example["where"], f"its group is also in {home[example['group']]}: a group stays in one split")
    return kept


# ----------------------------------------------------------------------------- synthetic stand-in
STANDIN_ANSWERS = {"benign": "A benign lesion with smooth, regular borders.",
                   "malignant": "A malignant lesion with irregular borders; biopsy advised.",
                   "normal_tissue": "Normal tissue, no lesion seen."}


def synthesize(out: Path, seed: int = 0, patients: int = 24) -> None:
    """images/ and the same table three ways: table.csv (no splits: data_prep draws them; two patients' images
    each), table.jsonl (with a split column) and table.parquet, each with a class label, a free-text answer and
    a question on some rows; table.csv also has the rows a shared table goes wrong with."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep._common import synthetic_tile

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = list(STANDIN_ANSWERS)
    rows = []
    for i in range(2 * patients):
        name = names[i % len(names)]
        image = f"images/{i:04d}.png"
        synthetic_tile(3 * names.index(name), rng, size=128).save(out / image)
        rows.append({"image": image, "label": name, "answer": STANDIN_ANSWERS[name],
                     "question": "What does this image show?" if i % 2 else "",
                     "patient": f"PAT-{i // 2:04d}",
                     "split": ("train", "train", "train", "validation", "test")[i // 2 % 5]})
    columns = ["image", "label", "answer", "question", "patient"]
    with open(out / "table.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([row[c] for c in columns] for row in rows)
        (out / "images" / "empty.png").write_bytes(b"")
        writer.writerows([
            ["images/empty.png", "benign", "x", "", "PAT-9001"],  # an unreadable image
            ["images/missing.png", "benign", "x", "", "PAT-9002"],  # no such file
            ["../outside.png", "benign", "x", "", "PAT-9003"],  # leads out of the table's folder
            ["/etc/hostname", "benign", "x", "", "PAT-9004"],  # absolute
            ["images/0000.png", "", "", "", "PAT-9005"],  # no label, no answer
            ["images/0001.png", "benign", "x", "", "PAT-9006", "an extra field"],  # malformed
        ])
    with open(out / "table.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.write("{not json\n")
    pq.write_table(pa.Table.from_pylist(rows), out / "table.parquet")
