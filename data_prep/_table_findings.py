"""Your own findings in a table (`data_prep table` / `hub` with --task findings): one column per finding (1, 0, -1
uncertain, blank not mentioned, read by the CheXpert label policies of data_prep/_findings.py), or a column listing
the findings present. Read here into each row's labels and the findings task; data_prep/_tabular.py builds the
dataset as for its other tasks."""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from data_prep import _own_data
from data_prep._common import PrepError, comma_list, require_column
from data_prep._findings import UNCERTAIN_READINGS, UNMENTIONED_READINGS, FindingCounts, FindingLabels, LabelPolicy
from medtune.tasks import get_task
from medtune.tasks._findings import ABSENT, PRESENT, finding_key

Row = tuple[str, dict[str, Any]]  # as data_prep/_tabular.py's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    findings = parser.add_argument_group("findings", "a yes/no question about each finding (--task findings); "
                                                     "--question is a template with {finding}")
    findings.add_argument("--finding-columns", metavar="NAME,NAME",
                          help="one column per finding: 1 (or 1.0, yes, true) present, 0 (0.0, no, false) absent, -1 "
                               "uncertain, blank not mentioned; a finding is asked as its column's name, lower-cased, "
                               "underscores as spaces (Pleural_Effusion: 'pleural effusion')")
    findings.add_argument("--findings-column", metavar="NAME",
                          help="a column listing the findings present (a list, a JSON list, or names separated by ';', "
                               "'|' or ','; blank: none); every finding it does not list is absent")
    findings.add_argument("--findings", metavar="NAME,NAME",
                          help="with --findings-column: the findings, in this order (default: every name the rows "
                               "list, sorted); a row listing another is skipped")
    findings.add_argument("--uncertain", choices=tuple(UNCERTAIN_READINGS), default="negative",
                          help="--finding-columns: how an uncertain value (-1) is read: negative (default), positive "
                               "or exclude (the pair is neither scored nor trained)")
    findings.add_argument("--unmentioned", choices=tuple(UNMENTIONED_READINGS), default="negative",
                          help="--finding-columns: how a blank value is read: negative (default) or exclude")


WHY_NOT_SCORED = "why_not_scored"  # a column of the splits while they are built, for the counts per finding
CELL_CODES = {"yes": "1", "true": "1", "no": "0", "false": "0"}  # words a finding column may hold, as codes


@dataclass(frozen=True)
class FindingsSource:
    """Where the rows hold their findings and how they are read: `column`, a list of the findings present (every
    other is absent), or where it is None one column per finding (`names`), read by `policy`. `names`: each
    finding as the rows spell it, in label order; `keys`: the same as metric keys (Pleural_Effusion:
    pleural_effusion)."""
    names: tuple[str, ...]
    keys: tuple[str, ...]
    column: str | None
    policy: LabelPolicy

    @classmethod
    def of(cls, rows: list[Row], columns: set[str], source: str, args: argparse.Namespace) -> "FindingsSource":
        """From the flags: --finding-columns, or --findings-column with --findings (default: every finding the rows
        list, sorted). PrepError for neither, both, or a column the rows do not have."""
        policy = LabelPolicy.of(args)
        if bool(args.finding_columns) == bool(args.findings_column):
            raise PrepError("--task findings reads one column per finding (--finding-columns NAME,NAME,...) or a "
                            "column listing the findings present (--findings-column NAME)" +
                            (": give one of them, not both" if args.finding_columns else ""))
        if args.findings and not args.findings_column:
            raise PrepError("--findings names the findings of --findings-column; with --finding-columns, the "
                            "columns are the findings")
        if args.finding_columns:
            names = comma_list(args.finding_columns)
            keys = _keys(names, "--finding-columns")
            missing = [name for name in names if name not in columns]
            if missing:
                raise PrepError(f"{source} has no finding column {missing[0]!r} (it has "
                                f"{', '.join(sorted(columns))}): name the columns with --finding-columns")
            return cls(tuple(names), keys, None, policy)
        require_column(source, columns, args.findings_column, "findings")
        names = comma_list(args.findings) or _listed_names(rows, args.findings_column)
        if not names:
            raise PrepError(f"{source}: no row lists a finding in {args.findings_column!r}: name them with --findings")
        return cls(tuple(names), _keys(names, "--findings"), args.findings_column, policy)

    def read(self, row: dict[str, Any]) -> tuple[FindingLabels | None, str | None]:
        """(the row's labels, None), or (None, why they cannot be read: a value that is no label, a finding not
        among these, none scored)."""
        if self.column is None:
            read = []
            for name in self.names:
                code = cell_code(row.get(name))
                try:
                    read.append(self.policy.read_one(code))
                except ValueError:
                    return None, (f"unreadable finding value: {name} is {code[:40]!r} (1, 0, -1, yes, no, true, false "
                                  "or blank)")
            labels = FindingLabels.of(read)
        else:
            listed, problem = listed_findings(row.get(self.column))
            if problem:
                return None, problem
            unknown = [name for name in listed if finding_key(name) not in self.keys]
            if unknown:
                return None, f"unknown finding: {unknown[0][:40]!r} (not one of --findings)"
            present = {finding_key(name) for name in listed}
            labels = FindingLabels.of([(PRESENT if key in present else ABSENT, "") for key in self.keys])
        if not labels.scored:
            return None, f"every finding excluded ({', '.join(sorted(set(labels.why_not_scored)))})"
        return labels, None

    def task(self, args: argparse.Namespace):
        """The findings task (--question, --protocol; --option KEY=TEXT or the recipe's task.options: the phrase a
        finding is asked by, else its name lower-cased, underscores as spaces), and the prep report's task block."""
        given = {finding_key(name): text for name, text in _own_data.option_texts(args).items()}
        unknown = sorted(set(given) - set(self.keys))
        if unknown:
            raise PrepError(f"--option {unknown[0]}: no such finding (findings: {', '.join(self.keys)})")
        options = {key: given.get(key) or " ".join(name.replace("_", " ").lower().split())
                   for key, name in zip(self.keys, self.names)}
        try:
            task = get_task("findings", args.question, options, args.protocol)
        except ValueError as e:
            raise PrepError(f"--task findings: {e}") from None
        return task, {"name": task.name, "question": task.question,
                      "options": dict(zip(task.class_names, task.findings)), "protocol": task.protocol}

    def options(self) -> dict[str, Any]:
        """How the findings were read, for the prep report."""
        if self.column is None:
            return {"finding_columns": list(self.names), "uncertain": self.policy.uncertain,
                    "unmentioned": self.policy.unmentioned}
        return {"findings_column": self.column, "findings": list(self.names)}

    def count(self, dataset_dict) -> FindingCounts:
        """Per split and finding, the rows written with it present, absent and not scored, and why not scored."""
        counts = FindingCounts(self.keys)
        for split, dataset in dataset_dict.items():
            for values, why in zip(dataset["finding_labels"], dataset[WHY_NOT_SCORED]):
                counts.add(split, FindingLabels(tuple(values), tuple(why)))
        return counts


def cell_code(value: Any) -> str:
    """A finding column's value as a CheXpert-style code: yes/true -> 1, no/false -> 0, None or NaN -> blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value).strip()
    return CELL_CODES.get(text.lower(), text)


def listed_findings(value: Any) -> tuple[list[str], str | None]:
    """The names a findings-list value holds (a list, a JSON list, or names separated by ';', '|' or ','; blank or
    empty: none), else ([], why not)."""
    if value is None:
        return [], "no findings list"
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return [], "unreadable findings list: not a JSON list"
    items = value if isinstance(value, (list, tuple)) else re.split(r"[;|,]", str(value))
    if not all(isinstance(item, str) for item in items):
        return [], "unreadable findings list: an item is not a name"
    return [" ".join(item.split()) for item in items if item.strip()], None


def _listed_names(rows: list[Row], column: str) -> list[str]:
    """Every finding the rows' lists name, sorted by key, each spelled as first seen."""
    spelling: dict[str, str] = {}
    for _, row in rows:
        listed, problem = listed_findings(row.get(column))
        for name in [] if problem else listed:
            spelling.setdefault(finding_key(name), name)
    return [spelling[key] for key in sorted(spelling) if key]


def _keys(names: list[str], flag: str) -> tuple[str, ...]:
    """The findings' metric keys; PrepError for a name that makes none, or two names that make the same."""
    seen: dict[str, str] = {}
    for name in names:
        key = finding_key(name)
        if not key:
            raise PrepError(f"{flag}: {name!r} is no finding's name")
        if key in seen:
            raise PrepError(f"{flag}: {seen[key]!r} and {name!r} are the same finding ({key})")
        seen[key] = name
    return tuple(seen)
