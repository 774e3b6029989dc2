"""Your own table of examples (CSV, JSON lines or Parquet), for the `classification`, `free_text` or `findings` task.

One row per example, its columns named by flags (data_prep/_tabular.py): `image` (a path relative to the table's
folder or --image-root, or in a Parquet file written by `datasets` the image's bytes), `label` or `answer`, or for
findings one column per finding (--finding-columns A,B: 1, 0, -1 uncertain or blank) or a column listing the findings
present (--findings-column NAME), and optionally `question`, `split`, `group` (--group-column, e.g. a patient id) and
`id` (--id-column).

The task is findings with a findings flag, else classification when the table has the label column, else free_text
(--task, or the recipe's task.name, chooses). Malformed rows, missing or unreadable images, empty labels or answers,
unreadable finding values, rows with no finding scored and unknown splits are skipped, counted and listed in
prep_report.json by row number (a missing image with its path).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Iterator

from data_prep import _tabular
from data_prep._common import PrepError, PrepReport
from data_prep._tabular import Row, RowSource

SOURCE_KIND = "file"  # --src is the table, not a folder
SUFFIXES = (".csv", ".jsonl", ".parquet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _tabular.add_arguments(parser)


# ----------------------------------------------------------------------------- reading the table
def read_rows(path: Path, report: PrepReport, args: argparse.Namespace) -> Iterator[Row]:
    """(where, row) for each well-formed row; `where` is `table.csv:LINE` (`table.parquet[ROW]`). Malformed rows
    are skipped."""
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
    elif suffix == ".parquet":  # through `datasets`: an image column of embedded bytes stays on disk until read
        from datasets import Dataset

        try:
            table = Dataset.from_parquet(str(path))
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a broken file
            raise PrepError(f"{path.name} is not a readable Parquet file: {e}") from None
        yield from _tabular.dataset_rows(table, path.name, args)
    else:
        raise PrepError(f"--src {path.name}: a table is a {', '.join(SUFFIXES)} file")


# ----------------------------------------------------------------------------- prepare
def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    report = _tabular.new_report("table", str(src), args)
    rows = list(read_rows(src, report, args))
    return _tabular.prepare_rows(RowSource(rows, src.name, args.image_root or src.parent), out, args, report)


# ----------------------------------------------------------------------------- synthetic stand-in
STANDIN_ANSWERS = {"benign": "A benign lesion with smooth, regular borders.",
                   "malignant": "A malignant lesion with irregular borders; biopsy advised.",
                   "normal_tissue": "Normal tissue, no lesion seen."}


def synthesize(out: Path, seed: int = 0, patients: int = 24) -> None:
    """images/ and the same table three ways: table.csv (no splits: data_prep draws them; two patients' images
    each), table.jsonl (with a split column) and table.parquet, each with a class label, a free-text answer and
    a question on some rows; table.csv also has the rows a shared table goes wrong with. And the findings tables
    beside them (synthesize_findings)."""
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
    synthesize_findings(out, seed, patients)


FINDINGS_STANDIN = ("Cardiomegaly", "Pleural_Effusion", "Nodule")  # findings.csv's finding columns, in its order
_SAID_PRESENT, _SAID_ABSENT = ("1", "1.0", "yes", "True"), ("0", "0.0", "no", "false")  # the spellings a cell takes
# the rows a findings table goes wrong with, each a patient of its own: id -> (what its film shows, its cells)
FINDINGS_STANDIN_ODD = {"F-uncertain": ([0, 0, 1], ["-1", "0", "1.0"]),  # cardiomegaly uncertain, not shown
                        "F-blank": ([1, 0, 0], ["1", "", "0"]),  # pleural effusion not mentioned
                        "F-unsure": ([0, 0, 0], ["", "-1.0", ""]),  # nothing certain: excluded under exclude/exclude
                        "F-malformed": ([1, 0, 0], ["1", "maybe", "0"]),  # no label
                        "F-missing": ([0, 0, 0], ["0", "0", "0"])}  # no image file


def synthesize_findings(out: Path, seed: int = 0, patients: int = 24) -> None:
    """findings/ (films on which each finding has its own sign: data_prep/_findings.synthetic_film, 96 px, two a
    patient) and their findings two ways: findings.csv, one column per finding (1/0 spelled several ways, no splits),
    with the rows FINDINGS_STANDIN_ODD lists; findings.jsonl, a split column and a `findings` column listing those
    present (a list, "a; b", "a|b" or a JSON list, names spelled as a person writes them), and findings.parquet, the
    same with real lists. The JSON lines also hold a row that puts patient FP-0000 in test (its others are in
    train), one listing nothing (all absent), one with a null list and one with a list that is not JSON."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep._findings import synthetic_film, synthetic_findings

    rng = np.random.default_rng(seed)
    (out / "findings").mkdir(parents=True, exist_ok=True)
    spoken = ("Cardiomegaly", "Pleural Effusion", "nodule")  # as a list names them: the same findings' keys

    def film(name: str, present: list[int]) -> str:
        synthetic_film(present, rng, size=96).save(out / "findings" / f"{name}.png")
        return f"findings/{name}.png"

    columns, listed, names_listed = [], [], []  # names_listed: each JSON line's findings as a list
    for i in range(2 * patients):
        present = synthetic_findings(len(FINDINGS_STANDIN), rng)
        row = {"id": f"F-{i:04d}", "image": film(f"{i:04d}", present), "patient": f"FP-{i // 2:04d}"}
        columns.append([*row.values(), *((_SAID_PRESENT if p else _SAID_ABSENT)[i % 4] for p in present)])
        names = [name for name, p in zip(spoken, present) if p]
        listed.append({**row, "split": ("train", "train", "train", "validation", "test")[i // 2 % 5],
                       "findings": (names, "; ".join(names), "|".join(names), json.dumps(names))[i % 4]})
        names_listed.append(names)
    for number, (name, (present, cells)) in enumerate(FINDINGS_STANDIN_ODD.items(), start=1):
        image = film(name, present) if name != "F-missing" else "findings/missing.png"
        columns.append([name, image, f"FP-90{number:02d}", *cells])
    with open(out / "findings.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "image", "patient", *FINDINGS_STANDIN], *columns])
    listed += [{**listed[0], "id": "L-other-split", "split": "test"},
               {**listed[1], "id": "L-nothing", "image": film("L-nothing", [0, 0, 0]), "patient": "FP-9101",
                "findings": ""},
               {**listed[1], "id": "L-null", "patient": "FP-9102", "findings": None}]
    names_listed += [names_listed[0], [], None]
    with open(out / "findings.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in listed)
        f.write(json.dumps({**listed[1], "id": "L-not-json", "patient": "FP-9103", "findings": "[Nodule"}) + "\n")
    rows = [{**row, "findings": names} for row, names in zip(listed, names_listed)]
    pq.write_table(pa.Table.from_pylist(rows), out / "findings.parquet")
