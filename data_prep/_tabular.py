"""Rows with named columns -> the prepared DatasetDict, for the `classification`, `free_text` or `findings` task:
what `data_prep table` (a CSV, JSON lines or Parquet file) and `data_prep hub` (a Hugging Face dataset) share.

A row's columns are named by flags (defaults in brackets):

    image     [image]     the image: a path relative to the source's folder (or --image-root; a path that leads
                          outside it is refused), the image's bytes as `datasets.Image` stores them ({bytes,
                          path}), or a list of these (several images an example); any image Pillow reads, or a DICOM
    label     [label]     a class name (classification), or
    answer    [answer]    a free-text answer (free_text), or
    findings              (findings) --finding-columns A,B,...: one column per finding, 1 present, 0 absent, -1
                          uncertain, blank not mentioned (yes/no, true/false too; read by --uncertain and
                          --unmentioned), or --findings-column NAME: the findings present, as a list, a JSON list or
                          names separated by ';', '|' or ','; every finding it does not list is absent
    question  [question]  optional, free_text: the row's own question (else --question or task.question)
    split     [split]     optional: train, validation or test (val, valid, dev too); missing splits drawn from train
    group     (none)      optional, --group-column: e.g. a patient id, stored as a keyed hash; no group in two splits
    id        (none)      optional, --id-column: the example's id (else its row number); --hash-ids stores it hashed

The task is findings with a findings flag, else classification when the rows have the label column, else free_text
(--task, or the recipe's task.name, chooses). Rows without an image, with an unreadable one, with an empty label or
answer, an unreadable finding value or no finding scored, or an unknown split are skipped, counted and listed in
prep_report.json, each where it stands in the source.
"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from data_prep import _own_data, _table_findings
from data_prep._common import (PrepError, PrepReport, build_split, comma_list, conversation, conversation_features,
                               group_by, hashed_id, id_key, require_column, save_dataset, staged_output)
from medtune.tasks import get_task
from medtune.tasks._findings import PROTOCOLS

# (where, row): where the row stands in the source (`table.csv:12`, `train[41]`), for the skip report, and its
# columns. An image column's value may be a callable that reads it: a dataset's image bytes stay on disk until
# its example is built.
Row = tuple[str, dict[str, Any]]
COLUMN_FLAGS = (("image", "image"), ("label", "label"), ("answer", "answer"), ("question", "question"),
                ("split", "split"), ("group", None), ("id", None))
TASKS = ("classification", "free_text", "findings")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _own_data.add_arguments(parser)
    parser.add_argument("--task", choices=TASKS, default=None,
                        help="default: findings with --finding-columns or --findings-column, else classification when "
                             "the rows have the label column, else free_text")
    parser.add_argument("--protocol", choices=tuple(dict.fromkeys((*get_task("free_text").protocols, *PROTOCOLS))),
                        default=None,
                        help="free_text: the prompt each question is asked with (default medtune: the question alone; "
                             "medgemma-slake, medgemma-vqa-rad, medgemma-1.5: the MedGemma reports' VQA prompts); "
                             "findings: each finding's (default medgemma: the MedGemma report's, Table A7; "
                             "medgemma-1.5: MedGemma 1.5's, Table 8)")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="the folder image paths are relative to (default: the source's); none may lead outside it")
    for column, default in COLUMN_FLAGS:
        parser.add_argument(f"--{column}-column", default=default, metavar="NAME")
    parser.add_argument("--hash-ids", action="store_true", help="store and report the id column as keyed hashes")
    _table_findings.add_arguments(parser)


@dataclass
class RowSource:
    """What a reader hands over: the rows, what to call the source in messages, and the folder image paths are
    relative to (None: paths are refused)."""
    rows: list[Row]
    name: str
    root: Path | None


# ----------------------------------------------------------------------------- a datasets.Dataset's rows
def dataset_rows(dataset, where: str, args: argparse.Namespace, split: str | None = None) -> Iterator[Row]:
    """(where[index], row) for each row of a `datasets.Dataset`: the named text columns read now (a ClassLabel as
    its class name), the image column deferred and raw ({bytes, path} structs, or a list of them: never decoded
    to PIL and encoded again). `split`: the dataset's own split, where the rows name none."""
    from datasets import ClassLabel

    names = [getattr(args, f"{column}_column") for column, _ in COLUMN_FLAGS if column != "image"]
    names += [*comma_list(args.finding_columns), args.findings_column]
    columns = [c for c in dict.fromkeys(names) if c and c in dataset.column_names]
    labels = {c: dataset.features[c] for c in columns if isinstance(dataset.features[c], ClassLabel)}
    label_lists = {c: dataset.features[c].feature for c in columns
                   if isinstance(getattr(dataset.features[c], "feature", None), ClassLabel)}  # e.g. findings' names
    arrow = dataset.with_format("arrow")
    images = arrow.select_columns([args.image_column]) if args.image_column in dataset.column_names else None
    text = arrow.select_columns(columns)
    for start in range(0, len(dataset), 1000):
        for offset, row in enumerate(text[start:start + 1000].to_pylist()):
            index = start + offset
            for column, feature in labels.items():
                row[column] = feature.int2str(row[column]) if row[column] is not None and row[column] >= 0 else None
            for column, feature in label_lists.items():
                if row[column] is not None:
                    row[column] = [feature.int2str(v) for v in row[column] if v is not None and v >= 0]
            if split is not None:
                row.setdefault(args.split_column, split)
            if images is not None:
                row[args.image_column] = partial(_raw_value, images, index, args.image_column)
            yield f"{where}[{index}]", row


def _raw_value(arrow_dataset, index: int, column: str) -> Any:
    return arrow_dataset[index].column(column)[0].as_py()


def holds_image_lists(rows: list[Row], column: str) -> bool:
    """Whether the rows' image column holds a list of images an example (its first value that is not empty)."""
    for _, row in rows:
        value = row.get(column)
        value = value() if callable(value) else value
        if value not in (None, "", []):
            return isinstance(value, (list, tuple))
    return False


# ----------------------------------------------------------------------------- images
def safe_image_path(relative: str, root: Path | None, series: bool = False,
                    absolute_inside: bool = False) -> tuple[Path | None, str | None]:
    """The image's path under `root`, or (None, reason): a shared table must not make the reader open any file
    on the machine, so an absolute path, or one that leads out of `root` (`../`, a link), is refused.
    `absolute_inside`: an absolute path is taken when it lies inside `root` (the paths `datasets` itself wrote for
    the files of a dataset folder)."""
    if not relative:
        return None, "no image path"
    if root is None:
        return None, "image path refused: the source has no folder for paths to be relative to (--image-root)"
    absolute = Path(relative).is_absolute() or relative.startswith(("\\", "~")) or ":" in Path(relative).parts[0]
    if absolute and not absolute_inside:
        return None, "image path refused: absolute (paths are relative to the table's folder or --image-root)"
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        return None, "image path refused: it leads outside the table's folder (or --image-root)"
    if series and path.is_dir():  # --series-slices: the folder of a series' slice DICOMs
        return path, None
    if not path.is_file():
        return None, "image not found" + (" (nor a series folder)" if series else "")
    return path, None


def image_sources(value: Any, root: Path | None, args: argparse.Namespace) -> tuple[list[Path | bytes], str | None]:
    """The files or bytes a row's image value names (a path, a {bytes, path} struct, bytes, or a list of these),
    else ([], reason). A path's reason names it (unless --hash-ids: names may hold identifiers)."""
    value = value() if callable(value) else value
    items = value if isinstance(value, (list, tuple)) else [value]
    sources: list[Path | bytes] = []
    for item in items:
        absolute_inside = isinstance(item, dict)  # a struct's path was written by `datasets` for its own files
        if isinstance(item, dict):
            item = item.get("bytes") or item.get("path")
        if isinstance(item, (bytes, bytearray, memoryview)):
            sources.append(bytes(item))
            continue
        text = "" if item is None else str(item).strip()
        path, problem = safe_image_path(text, root, bool(args.series_slices), absolute_inside)
        if problem:
            shown = "" if not text or args.hash_ids else f": {text[:160]}"
            return [], ("no image" if problem == "no image path" else problem + shown)
        sources.append(path)
    if not sources:
        return [], "no image"
    return sources, None


def read_images(value: Any, root: Path | None, several: bool,
                args: argparse.Namespace) -> tuple[dict[str, Any] | None, str | None]:
    """({images: [bytes...], patient, dicom_how}, None) for a row's image value, else (None, reason)."""
    sources, problem = image_sources(value, root, args)
    if problem:
        return None, problem
    if len(sources) > 1 and not several:
        return None, f"{len(sources)} images where the source has one an example"
    read = []
    for source in sources:
        image, problem = _own_data.read_example(source, args)
        if problem:
            return None, problem if len(sources) == 1 else f"image {len(read) + 1} of {len(sources)}: {problem}"
        read.append(image)
    return {"images": [data for image in read for data in image["images"]], "patient": read[0]["patient"],
            "dicom_how": read[0]["dicom_how"]}, None


# ----------------------------------------------------------------------------- prepare
def prepare_rows(source: RowSource, out: Path, args: argparse.Namespace, report: PrepReport) -> PrepReport:
    from datasets import ClassLabel, List, Value

    key, rows = report.hash_key, source.rows
    if not rows:
        raise PrepError(f"{source.name} has no readable row", report)
    columns = set().union(*(row.keys() for _, row in rows))
    task_name = task_name_of(args, columns)
    require_column(source.name, columns, args.image_column, "image")
    findings = None
    if task_name == "findings":
        findings = _table_findings.FindingsSource.of(rows, columns, source.name, args)
        read_target = findings.read
    else:
        target = args.label_column if task_name == "classification" else args.answer_column
        require_column(source.name, columns, target, target_flag(task_name))
        read_target = partial(_text_target, target)
    examples = _examples(rows, args, read_target, report)
    classes: list[str] = []
    if task_name == "classification":
        classes = sorted({e["target"] for e in examples})
        if not classes:
            raise PrepError(f"{source.name}: no row has a label", report)
        task, report.task = _own_data.classification_task(classes, args)

        def conversation_of(example: dict[str, Any], images: int) -> tuple[list, str, dict[str, Any]]:
            label = classes.index(example["target"])
            return conversation(task.prompt(), task.answer(label), images=images), task.answer(label), {"label": label}
    elif task_name == "findings":
        task, report.task = findings.task(args)
        report.options.update(findings.options())

        def conversation_of(example: dict[str, Any], images: int) -> tuple[list, str, dict[str, Any]]:
            labels, values = example["target"], list(example["target"].values)
            return task.messages(values, images=images), task.summary(values), {
                "finding_labels": values, _table_findings.WHY_NOT_SCORED: list(labels.why_not_scored)}
    else:
        task = get_task("free_text", args.question, None, args.protocol)
        report.task = {"name": task.name, "question": task.question, "protocol": task.protocol}

        def conversation_of(example: dict[str, Any], images: int) -> tuple[list, str, dict[str, Any]]:
            # the row's own question kept: evaluation asks it anew under another protocol (a benchmark's)
            prompt, answer = task.prompt(example["question"]), task.answer(example["target"])
            return conversation(prompt, answer, images=images), answer, {"question": example["question"]}

    several = bool(args.series_slices) or holds_image_lists(rows, args.image_column)

    def generate(items: list[dict[str, Any]], split: str) -> Callable[[], Iterator[dict[str, Any]]]:
        def rows_of_split():
            for example in tqdm(items, desc=f"reading {split}", unit="example", mininterval=1.0):
                image, problem = read_images(example["image"], source.root, several, args)
                if problem:
                    report.skip(example["where"], problem)
                    continue
                if image["dicom_how"]:
                    hows.append(image["dicom_how"])
                messages, answer, extra = conversation_of(example, len(image["images"]))
                yield {"id": example["id"], "group": example["group"],
                       **_own_data.image_columns(image["images"], several), "messages": messages, "answer": answer,
                       **extra}
        return rows_of_split

    for example in examples:
        example["id"] = hashed_id(example["id"], key) if args.hash_ids else example["id"]
        example["group"] = hashed_id(example["group"], key) if example["group"] is not None else example["id"]
    examples = _keep_groups_in_one_split(examples, report)
    hows: list[str] = []
    extra = {"group": Value("string")}
    if task_name == "classification":
        extra["label"] = ClassLabel(names=classes)
    elif task_name == "findings":  # why each pair is not scored: counted once the splits are drawn, not stored
        extra.update({"finding_labels": List(Value("int8")),
                      _table_findings.WHY_NOT_SCORED: List(Value("string"))})
    else:
        extra["question"] = Value("string")
    features = conversation_features(extra, images=_own_data.image_layout(several))
    with staged_output(out, args.overwrite) as staging:
        built = {split: build_split(generate(items, split), features, staging, split)
                 for split, items in sorted(group_by(examples, lambda e: e["split"]).items())}
        dataset_dict = _own_data.complete_splits(built, args, report, "group")
        if findings:
            counts = findings.count(dataset_dict)
            dataset_dict = dataset_dict.remove_columns(_table_findings.WHY_NOT_SCORED)
            for split in dataset_dict:
                report.splits[split] = {"per_finding": counts.per_finding(split)}
        _own_data.note_dicom_handling(report, hows)
        save_dataset(dataset_dict, report, staging, classes or None,
                     count_by="label" if task_name == "classification" else None)
    return report


def new_report(dataset: str, source: str, args: argparse.Namespace) -> PrepReport:
    return PrepReport(dataset=dataset, source=source, options=_own_data.split_options(args), hash_key=id_key())


def task_name_of(args: argparse.Namespace, columns: set[str]) -> str:
    """--task, else findings where a findings flag is given, classification where the rows have the label column,
    free_text. PrepError for findings flags given to another task."""
    flags = [flag for flag, value in (("--finding-columns", args.finding_columns),
                                      ("--findings-column", args.findings_column), ("--findings", args.findings))
             if value]
    task_name = args.task or ("findings" if flags else
                              "classification" if args.label_column in columns else "free_text")
    if flags and task_name != "findings":
        raise PrepError(f"{flags[0]} is for --task findings, not {task_name}")
    return task_name


def target_flag(task_name: str) -> str:
    return "label" if task_name == "classification" else "answer"


def _text(row: dict[str, Any], column: str | None) -> str:
    value = row.get(column) if column else None
    return "" if value is None else str(value).strip()


def _text_target(column: str, row: dict[str, Any]) -> tuple[str, str | None]:
    value = _text(row, column)
    return value, None if value else f"empty {column}"


def _examples(rows: list[Row], args: argparse.Namespace, read_target: Callable[[dict[str, Any]], tuple[Any, Any]],
              report: PrepReport) -> list[dict[str, Any]]:
    """The rows with a target (`read_target`: the row's label, answer or findings, else why it has none) and a known
    split (their images are read when the dataset is built); the others are skipped."""
    examples = []
    for index, (where, row) in enumerate(rows):
        split = _text(row, args.split_column).lower()
        value, problem = read_target(row)
        if not problem and split and split not in _own_data.SPLIT_NAMES:
            problem = f"unknown split {split[:20]!r} (train, validation or test)"
        if problem:
            report.skip(where, problem)
            continue
        examples.append({"where": where, "image": row.get(args.image_column), "target": value,
                         "question": _text(row, args.question_column),
                         "split": _own_data.SPLIT_NAMES.get(split, "pool"),
                         "id": _text(row, args.id_column) or f"row-{index}",
                         "group": _text(row, args.group_column) or None})
    if any(e["split"] != "pool" for e in examples) and any(e["split"] == "pool" for e in examples):
        for example in [e for e in examples if e["split"] == "pool"]:
            report.skip(example["where"], "no split, where other rows have one")
        examples = [e for e in examples if e["split"] != "pool"]
    return examples


def _keep_groups_in_one_split(examples: list[dict[str, Any]], report: PrepReport) -> list[dict[str, Any]]:
    """A group (patient) the rows put in several splits stays in the one holding most of its rows; its rows in
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
