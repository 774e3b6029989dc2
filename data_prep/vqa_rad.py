"""VQA-RAD (Lau et al. 2018), radiology VQA on MedPix images, from the OSF release or the Hub's Parquet copy:

    RAW/VQA_RAD Dataset Public.json       the OSF release (osf.io/89kps): one JSON array of questions
    RAW/VQA_RAD Image Folder/synpicN.jpg
  or
    RAW/data/{train,test}-*.parquet       the Hub's flaviagiammarino/vqa-rad: image {bytes, path}, question, answer

The OSF questions: qid, image_name, question, answer, answer_type (OPEN or CLOSED), question_type, phrase_type
(freeform, para, test_freeform, test_para), image_organ, ... Split: VQA-RAD's official one (test: the 451 questions
whose phrase_type starts with test_; train: the rest), or with --balanced-split FILE Google's balanced split, the one
MedGemma's VQA-RAD figure was measured on (vqa_rad_balanced_split_and_human_eval_inclusions.tsv from
Google-Health/google-health's data_splits/: QID_unique, the JSON's qid -> SPLIT_BALANCED train, validation or test;
its test part: 735 questions); a question whose qid the file lacks is skipped and listed. The Hub copy (the official
split, lower-cased, duplicates dropped: train 1,793, test 451) has no qids: its ids are `split-row`, its answer_type
is closed where the answer is yes or no, and Google's split cannot be joined to it. Where the split has no validation
part, 10% of train's images are drawn for it with all their questions (--seed): no image in both. Rows keep the
question, the answer, answer_type (open or closed), and from the OSF release question_type, image_organ and
phrase_type. An image named by many questions is read once (images are told apart by name in the OSF release, by
their bytes in the Hub copy); a missing or unreadable one skips every question that names it, each listed, as is a
question without text or answer. A JSON file that does not parse is refused. Default prompt: the report's VQA-RAD
prompt (--protocol medgemma-vqa-rad; medtune: the question alone).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from data_prep._common import (PrepError, PrepReport, build_split, read_json_file, staged_output, stratified_split,
                               synthetic_tile)
from data_prep._tabular import safe_image_path
from data_prep.medqa import REPORT_TABLE_2
from data_prep.slake import ImagesReadOnce, add_vqa_arguments, save_vqa, text, vqa_features, vqa_report, vqa_row
from medtune.tasks import get_task

OSF_JSON, OSF_IMAGES = "VQA_RAD Dataset Public.json", "VQA_RAD Image Folder"
BALANCED_FILE = "vqa_rad_balanced_split_and_human_eval_inclusions.tsv"
BALANCED_HEADER = ["QID_unique", "SPLIT_BALANCED", "INCLUDED_IN_HUMAN_EVAL"]
SPLITS = ("train", "validation", "test")
HUB_SPLITS = ("train", "test")
HUB_COLUMNS = ("image", "question", "answer")
OSF_COLUMNS = ("question_type", "image_organ", "phrase_type")
VALIDATION_FRACTION = 0.1
PUBLISHED_TEST = 735  # the balanced split's test questions: what MedGemma's VQA-RAD figure was measured on
RELEASE = 2248  # every question of the OSF release, what the report's Table 2 lists
FIGURE = "the MedGemma model card's VQA-RAD figure (Google's balanced split, its test part)"


@dataclass(frozen=True)
class Question:
    """One question as a layout gives it, before its checks."""
    where: str  # where it stands in the source, for the skip report
    qid: str
    question: Any
    answer: Any
    given_type: Any  # the publisher's answer_type (None in the Hub copy)
    image_key: str  # what tells its image apart: read once per key
    image_source: Callable[[], tuple[Path | bytes | None, str | None]]  # the image's file or bytes, else why not
    image_name: str = ""  # in the reasons it is skipped for
    extras: dict[str, str] = field(default_factory=dict)  # the OSF columns kept


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--balanced-split", type=Path, default=None, metavar="TSV",
                        help=f"Google's balanced split ({BALANCED_FILE}, Google-Health/google-health data_splits/), "
                             "the split MedGemma's VQA-RAD figure was measured on (needs the OSF release's qids); "
                             "default: VQA-RAD's official split")
    parser.add_argument("--seed", type=int, default=42,
                        help="which training images validation draws where the split has none (default 42)")
    add_vqa_arguments(parser, "medgemma-vqa-rad")


# ----------------------------------------------------------------------------- the two layouts
def _layout(src: Path) -> str:
    if (src / OSF_JSON).is_file() and (src / OSF_IMAGES).is_dir():
        return "osf"
    if all(_hub_files(src, split) for split in HUB_SPLITS):
        return "hub"
    raise PrepError(f"{src} has neither {OSF_JSON} and {OSF_IMAGES}/ (VQA-RAD's OSF release) nor data/train-*.parquet "
                    "and data/test-*.parquet (flaviagiammarino/vqa-rad): point --src at the folder that holds them")


def _hub_files(src: Path, split: str) -> list[Path]:
    return sorted((src / "data").glob(f"{split}-*.parquet"))


def _osf_records(src: Path) -> list[Any]:
    return read_json_file(src / OSF_JSON, list, "a JSON array of questions: is it VQA-RAD's?")


def _balanced_split(path: Path, report: PrepReport) -> dict[str, str]:
    """qid -> train, validation or test, from Google's TSV; a row that is not `qid<TAB>split<TAB>TRUE|FALSE` is
    skipped and listed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as e:
        raise PrepError(f"--balanced-split {path}: cannot read it ({type(e).__name__}: {e})") from None
    if not lines or lines[0].strip().split("\t") != BALANCED_HEADER:
        raise PrepError(f"--balanced-split {path.name}: its header is not {' '.join(BALANCED_HEADER)} (tab-separated): "
                        f"is it Google's {BALANCED_FILE}?")
    split_of = {}
    for number, line in enumerate(lines[1:], 2):
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != len(BALANCED_HEADER) or not fields[0]:
            report.skip(f"{path.name}:{number}", f"malformed row: {len(fields)} fields (expected 3)")
            continue
        if fields[1] not in SPLITS:
            report.skip(f"{path.name}:{number}", f"SPLIT_BALANCED {fields[1]!r} is not train, validation or test")
            continue
        split_of[fields[0]] = fields[1]
    return split_of


def _osf_questions(records: list[Any], src: Path, split_of: dict[str, str] | None, tsv: str,
                   report: PrepReport) -> dict[str, list[Question]]:
    """Our split -> its questions: the balanced split's (`split_of`, from the file `tsv`), else the official one."""
    by_split = defaultdict(list)
    for index, item in enumerate(records):
        where = f"{OSF_JSON}[{index}]"
        if not isinstance(item, dict):
            report.skip(where, "not a question record")
            continue
        qid, name = text(item.get("qid")) or f"row-{index}", text(item.get("image_name"))
        if split_of is None:
            split = "test" if text(item.get("phrase_type")).startswith("test_") else "train"
        elif qid not in split_of:
            report.skip(where, f"qid {qid} is not in {tsv}")
            continue
        else:
            split = split_of[qid]
        by_split[split].append(Question(where, qid, item.get("question"), item.get("answer"), item.get("answer_type"),
                                        name, partial(safe_image_path, name, src / OSF_IMAGES), name,
                                        {column: text(item.get(column)) for column in OSF_COLUMNS}))
    return by_split


def _check_hub_columns(src: Path) -> None:
    import pyarrow.parquet as pq

    for path in (path for split in HUB_SPLITS for path in _hub_files(src, split)):
        name = path.relative_to(src)
        try:
            columns = pq.read_schema(path).names
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a file that is no Parquet
            raise PrepError(f"cannot read {name} ({type(e).__name__}: {e}): download it again") from None
        missing = [column for column in HUB_COLUMNS if column not in columns]
        if missing:
            raise PrepError(f"{name} has no column {', '.join(missing)}: is it flaviagiammarino/vqa-rad?")


def _hub_questions(src: Path, split: str, staging: Path) -> Iterator[Question]:
    """The split's rows, read with `datasets` (images as their bytes, decoded once: ImagesReadOnce); ids
    `split-row`."""
    from datasets import Dataset
    from datasets import Image as ImageFeature

    row = 0
    for path in _hub_files(src, split):
        data = Dataset.from_parquet(str(path), cache_dir=str(staging / "cache"))
        for index, record in enumerate(data.cast_column("image", ImageFeature(decode=False))):
            raw = (record["image"] or {}).get("bytes")
            yield Question(f"{path.relative_to(src)}[{index}]", f"{split}-{row}", record["question"], record["answer"],
                           None, hashlib.sha1(raw).hexdigest() if raw else "", partial(_embedded, raw))
            row += 1


def _embedded(raw: bytes | None) -> tuple[bytes | None, str | None]:
    return (raw, None) if raw else (None, "no image")


# ----------------------------------------------------------------------------- prepare
def _rows(questions: Callable[[], Iterable[Question]], split: str, task, images: ImagesReadOnce,
          image_of: dict[str, str], report: PrepReport):
    """The split's rows; `image_of` learns each kept question's image (its pixels' digest)."""
    def generate():
        for asked in tqdm(questions(), desc=f"reading {split}", unit="question", mininterval=1.0):
            row, problem = vqa_row(task, asked.qid, asked.question, asked.answer, asked.given_type,
                                   partial(images.get, asked.image_key, asked.image_source, asked.image_name),
                                   **asked.extras)
            if problem:
                report.skip(asked.where, problem)
                continue
            image_of[asked.qid] = images.digest(asked.image_key)
            yield row
    return generate


def _draw_validation(train, image_of: dict[str, str], seed: int, report: PrepReport):
    """(train, validation): 10% of train's images drawn, each with all its questions."""
    groups = [image_of[qid] for qid in train["id"]]
    kept, held = stratified_split([0] * len(groups), VALIDATION_FRACTION, seed, groups=groups)
    report.notes.append(f"validation: {len(held):,} questions on {len({groups[i] for i in held}):,} of train's "
                        f"{len(set(groups)):,} images, drawn with all their questions (10% of the images, seed "
                        f"{seed}): no image in both")
    return train.select(kept), train.select(held)


def _shared_images(splits: dict[str, Any], image_of: dict[str, str]) -> tuple[int, int]:
    """(how many of the test split's images also have training or validation questions, how many it has)."""
    def images(*names: str) -> set[str]:
        return {image_of[qid] for name in names for qid in splits[name]["id"]}

    tested = images("test")
    return len(tested & images("train", "validation")), len(tested)


def _split_note(layout: str, tsv: Path | None, splits: dict[str, Any], image_of: dict[str, str],
                report: PrepReport) -> None:
    """Whose split this is, how many test images training sees too, and where the split MedGemma's figure used is."""
    shared, tested = _shared_images(splits, image_of)
    if tsv:
        report.notes.append(f"split: Google's balanced split ({tsv.name}, Yang et al. 2024), the one MedGemma's "
                            f"VQA-RAD figure was measured on (its test part: {PUBLISHED_TEST} questions in the "
                            f"published file); {shared:,} of the test split's {tested:,} images also have training "
                            "questions")
        return
    where = (f"pass --balanced-split {BALANCED_FILE}" if layout == "osf" else
             "the Hub copy has no qids to join it on: prepare the OSF release with --balanced-split")
    report.notes.append(f"split: VQA-RAD's official one (test: the questions whose phrase_type starts with test_); "
                        f"{shared:,} of the test split's {tested:,} images also have training questions, the overlap "
                        f"Google's balanced split (Yang et al. 2024) avoids: {where} for the split MedGemma's VQA-RAD "
                        "figure was measured on")


def _unknown_qids_note(tsv: Path, split_of: dict[str, str], records: list[Any], report: PrepReport) -> None:
    unknown = set(split_of) - {text(item.get("qid")) for item in records if isinstance(item, dict)}
    if unknown:
        report.notes.append(f"{len(unknown):,} qids of {tsv.name} name no question of {OSF_JSON}")


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    args.frame, args.ct_windows = None, False  # read_image's DICOM options: VQA-RAD's images are JPEGs
    task = get_task("free_text", protocol=args.protocol)
    layout, tsv = _layout(src), args.balanced_split
    if tsv and layout == "hub":
        raise PrepError(f"--balanced-split joins on the OSF release's qids, and the Hub copy in {src} has none: point "
                        f"--src at the OSF release ({OSF_JSON}, {OSF_IMAGES}/)")
    if tsv and not tsv.is_file():
        raise PrepError(f"--balanced-split {tsv} is not a file: download {BALANCED_FILE} from Google-Health/"
                        "google-health (data_splits/)")
    report = vqa_report("vqa_rad", src, task, layout=layout, split="balanced" if tsv else "official",
                        seed=args.seed, image_size=args.image_size)
    if layout == "osf":
        records = _osf_records(src)  # a broken file stops the prep at once
        split_of = _balanced_split(tsv, report) if tsv else None
        by_split = _osf_questions(records, src, split_of, tsv.name if tsv else "", report)
    else:
        _check_hub_columns(src)
    images, image_of = ImagesReadOnce(args), {}
    with staged_output(out, args.overwrite) as staging:
        if layout == "osf":
            sources = {split: partial(list, by_split[split]) for split in (SPLITS if tsv else HUB_SPLITS)}
        else:
            sources = {split: partial(_hub_questions, src, split, staging) for split in HUB_SPLITS}
        features = vqa_features(OSF_COLUMNS if layout == "osf" else ())
        splits = {split: build_split(_rows(questions, split, task, images, image_of, report), features, staging,
                                     split) for split, questions in sources.items()}
        if tsv:
            _unknown_qids_note(tsv, split_of, records, report)
        else:
            splits["train"], splits["validation"] = _draw_validation(splits["train"], image_of, args.seed, report)
        _split_note(layout, tsv, splits, image_of, report)
        images.note(report, sum(len(split) for split in splits.values()))
        report.compare_count("test", len(splits["test"]), PUBLISHED_TEST, "questions", FIGURE)
        report.notes.append(f"{REPORT_TABLE_2} lists {RELEASE:,} VQA-RAD examples: the whole OSF release (the balanced "
                            f"split's qids 0 to {RELEASE - 1:,}), not a test split")
        save_vqa(splits, report, staging)
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
# An image's colour and stripes name its organ system and modality; its questions ask for these, or whether it was
# taken with one modality (yes/no): every answer follows from the image.
KINDS = [("HEAD", "MRI", "brain"), ("CHEST", "X-ray", "chest"), ("ABD", "CT", "abdomen")]  # organ, modality, system
IMAGES = 24
OFFICIAL_TEST_IMAGES = range(18, 24)  # their questions are test_freeform and test_para
ALSO_IN_TEST = range(3)  # training images that one official test question asks about too, as in the real split
HUB_FILES = {"train": "train-00000-of-00001-eb8844602202be60.parquet",
             "test": "test-00000-of-00001-e5bc3d208bb4deeb.parquet"}


def _image_name(image: int) -> str:
    return f"synpic{10000 + image}.jpg"


def _questions(image: int, qid: int) -> list[dict[str, Any]]:
    """The image's questions as the OSF JSON holds them: two free-form ones and a paraphrase, and one more in the
    official test for the images of ALSO_IN_TEST."""
    organ, modality, system = KINDS[image % len(KINDS)]
    asked = KINDS[image // len(KINDS) % len(KINDS)][1]  # the modality the closed question names
    test = "test_" if image in OFFICIAL_TEST_IMAGES else ""
    questions = [(f"{test}freeform", "What organ system is shown in this image?", system, "OPEN", "ORGAN"),
                 (f"{test}freeform", f"Was {asked} used to take this image?", "Yes" if asked == modality else "No",
                  "CLOSED", "MODALITY"),
                 (f"{test}para", "Which organ system is pictured?", system, "OPEN", "ORGAN"),
                 *([("test_freeform", "What imaging modality was used?", modality, "OPEN", "MODALITY")]
                   if image in ALSO_IN_TEST else [])]
    return [{"qid": qid + k, "phrase_type": phrase, "qid_linked_id": str(qid), "image_case_url":
             f"https://medpix.nlm.nih.gov/case?id={image:04d}", "image_name": _image_name(image), "image_organ": organ,
             "evaluation": "given", "question": question, "question_rephrase": "NULL", "question_relation": "NULL",
             "question_frame": "NULL", "question_type": kind, "answer": answer, "answer_type": answer_type}
            for k, (phrase, question, answer, answer_type, kind) in enumerate(questions)]


def _records() -> list[dict[str, Any]]:
    """Every image's questions, then the broken ones a real download can hold: a question whose image is missing,
    two whose image is cut short (synpic10100.jpg), one without an answer."""
    records: list[dict[str, Any]] = []
    for image in range(IMAGES):
        records += _questions(image, len(records))
    missing, corrupt = _questions(99999 - 10000, len(records))[:1], _questions(100, len(records) + 1)[:2]
    no_answer = {**_questions(0, len(records) + 3)[0], "answer": ""}
    return [*records, *missing, *corrupt, no_answer]


def _balanced_rows(records: list[dict[str, Any]]) -> str:
    """Google's TSV for the records: split by image (test, validation, train), rows grouped test, train, validation,
    no final newline; one qid left out, and the last row cut short as an interrupted download leaves it."""
    def split_of(record: dict[str, Any]) -> str:
        image = int(record["image_name"][len("synpic"):-len(".jpg")]) - 10000
        return "train" if image >= IMAGES else ("test", "validation", "train", "train")[image % 4]

    left_out = next(r["qid"] for r in records if r["image_name"] == _image_name(6) and r["phrase_type"] == "para")
    rows = [f"{r['qid']}\t{split}\t{'FALSE' if r['image_name'] == _image_name(20) else 'TRUE'}"
            for split in ("test", "train", "validation") for r in records
            if split_of(r) == split and r["qid"] != left_out]
    rows[-1] = rows[-1][:rows[-1].index("\t") + 4]
    return "\n".join(["\t".join(BALANCED_HEADER), *rows])


def _write_hub_copy(folder: Path, records: list[dict[str, Any]], images: Path) -> None:
    """flaviagiammarino/vqa-rad's Parquet files: the official split, lower-cased, images embedded by `datasets`."""
    from datasets import Dataset, Features, Image, Value

    features = Features({"image": Image(), "question": Value("string"), "answer": Value("string")})
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in HUB_FILES.items():
        rows = [{"image": ({"bytes": (images / r["image_name"]).read_bytes(), "path": None}
                           if (images / r["image_name"]).is_file() else None),
                 "question": r["question"].lower(), "answer": r["answer"].lower()}
                for r in records if r["phrase_type"].startswith("test_") == (split == "test")]
        Dataset.from_list(rows, features=features).to_parquet(str(folder / name))


def synthesize(out: Path, seed: int = 0) -> None:
    """The OSF release (VQA_RAD Dataset Public.json, VQA_RAD Image Folder/: 24 images of 96 px, 75 questions and 4
    broken ones), Google's balanced-split TSV for it beside them, and the Hub's Parquet copy of the same questions
    in vqa-rad/data/ (--src RAW/vqa-rad)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = out / OSF_IMAGES
    images.mkdir(parents=True, exist_ok=True)
    for image in range(IMAGES):
        synthetic_tile(3 * (image % len(KINDS)), rng, size=96).save(images / _image_name(image), quality=90)
    corrupt = images / _image_name(100)
    synthetic_tile(0, rng, size=96).save(corrupt, quality=90)
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    records = _records()
    (out / OSF_JSON).write_text(json.dumps(records, indent=1), encoding="utf-8")
    (out / BALANCED_FILE).write_text(_balanced_rows(records), encoding="utf-8")
    _write_hub_copy(out / "vqa-rad" / "data", records, images)
