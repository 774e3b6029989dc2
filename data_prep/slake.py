"""SLAKE (Liu et al. 2021), bilingual radiology VQA, as the Hub's BoKelvin/SLAKE or the Slake1.0 zip lays it out:

    RAW/train.json, RAW/test.json          each one JSON array of questions
    RAW/validation.json                    (the Hub's name) or RAW/validate.json (the Slake1.0 zip's)
    RAW/imgs/xmlabN/source.jpg             imgs.zip unzipped: the images the questions name (img_name)

Each question: img_id, img_name ("xmlab102/source.jpg", under imgs/), question, answer, q_lang (en or zh), location,
modality, answer_type (OPEN or CLOSED), base_type, content_type, triple, qid. SLAKE's split is kept: train -> train,
validate -> validation, test -> test; the MedGemma report evaluated the English test questions (1,061). English only
by default (--languages en, or en,zh): the questions of other languages are left out and counted per split in a
note. Rows keep the question, the answer, answer_type (open or closed), modality, location, content_type and q_lang,
their id is the qid. An image named by many questions is read once; a missing or unreadable one skips every question
that names it, each listed, as is a question without text or answer. A JSON file that does not parse is refused.
Default prompt: the report's SLAKE prompt (--protocol medgemma-slake; medtune: the question alone). KG/ and the
masks are not read.

What the VQA readers share (vqa_rad imports it from here): --protocol and --image-size, images read once, the
rows' columns and answer_type, saving the splits.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from data_prep._common import (MODEL_IMAGE_SIZE, PrepError, PrepReport, build_split, conversation,
                               conversation_features, read_json_file, save_dataset, staged_output,
                               synthetic_tile)
from data_prep._own_data import read_image
from data_prep._tabular import safe_image_path
from data_prep.medqa import REPORT_TABLE_2
from medtune.tasks import get_task
from medtune.tasks.free_text import closed_answer

TASK = get_task("free_text")
SPLIT_FILES = {"train": ("train.json",), "validation": ("validation.json", "validate.json"), "test": ("test.json",)}
LANGUAGES = ("en", "zh")
EXTRA_COLUMNS = ("modality", "location", "content_type", "q_lang")
PUBLISHED_TEST = 1061  # English test questions
Found = tuple[dict[str, Any] | None, str | None]  # (what was read, None), or (None, why not)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--languages", type=_languages, default=["en"], metavar="en[,zh]",
                        help="the questions' languages to keep (default en: the MedGemma report's English questions)")
    add_vqa_arguments(parser, "medgemma-slake")


def _languages(value: str) -> list[str]:
    chosen = [code.strip() for code in value.split(",") if code.strip()]
    unknown = [code for code in chosen if code not in LANGUAGES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{value!r}: SLAKE's languages are {' and '.join(LANGUAGES)}")
    return chosen


# ----------------------------------------------------------------------------- what the VQA readers share
def add_vqa_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--protocol", choices=TASK.protocols, default=default,
                        help=f"the prompt each question is asked with and the answer form trained (default {default}: "
                             "the MedGemma report's prompt for this benchmark; medtune: the question alone, the bare "
                             "answer; medgemma-1.5: MedGemma 1.5's)")
    parser.add_argument("--image-size", type=int, default=MODEL_IMAGE_SIZE,
                        help="larger images are stored SIZE x SIZE, the model's input (default 896; 0: as they are)")


def vqa_report(dataset: str, src: Path, task, **options: Any) -> PrepReport:
    return PrepReport(dataset=dataset, source=str(src), options=options,
                      task={"name": task.name, "question": task.question, "protocol": task.protocol})


class ImagesReadOnce:
    """Images read once each, however many questions name them: key -> ({bytes, digest}, None) or (None, why).
    `digest` names the stored pixels, so that an image's questions can be kept in one split. The stored images stay
    in memory for the prep: a few hundred MB for SLAKE's 642 images or VQA-RAD's 315 at 896 px."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.read: dict[str, Found] = {}

    def get(self, key: str, source: Callable[[], tuple[Path | bytes | None, str | None]], name: str = "") -> Found:
        """The image `key` names; `source()` gives its file or bytes (or None and why) the first time. `name`: the
        image's name in the reasons it is skipped for."""
        if key not in self.read:
            found, problem = source()
            image, problem = (None, problem) if problem else read_image(found, self.args)
            if problem:
                self.read[key] = None, f"{problem}: {name}" if name else problem
            else:
                self.read[key] = {"bytes": image["bytes"], "digest": hashlib.sha1(image["bytes"]).hexdigest()}, None
        return self.read[key]

    def digest(self, key: str) -> str:
        """The stored pixels' hash of the readable image `key` names: the same for one image under two names."""
        return self.read[key][0]["digest"]

    def note(self, report: PrepReport, questions: int) -> None:
        named = [image for key, (image, _) in self.read.items() if key]  # "": questions that name no image
        report.notes.append(f"images: {len(named):,} named, each read once however many questions name it "
                            f"({sum(image is not None for image in named):,} readable; {questions:,} questions kept)")


def text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def answer_type(given: Any, answer: str) -> str:
    """open or closed: the publisher's (OPEN, CLOSED, any case), else closed where the answer is yes or no."""
    given = text(given).lower()
    if given in ("open", "closed"):
        return given
    return "closed" if closed_answer(answer) else "open"


def vqa_features(extra_columns: tuple[str, ...]):
    from datasets import Value

    return conversation_features({"question": Value("string"), "answer_type": Value("string"),
                                  **{column: Value("string") for column in extra_columns}}, images="one")


def vqa_row(task, qid: str, question: Any, answer: Any, given_type: Any, image: Callable[[], Found],
            **extras: str) -> Found:
    """(the row, None) for a question with text, answer and a readable image, else (None, why); `image()` (an
    ImagesReadOnce.get) is asked only for a question with text and answer. The row holds the raw question and
    reference answer, its conversation under the task's protocol, and the answer's type: the publisher's
    `given_type`, else closed where the answer is yes or no."""
    question, answer = text(question), text(answer)
    if not question:
        return None, "no question"
    if not answer:
        return None, "no answer"
    picture, problem = image()
    if problem:
        return None, problem
    return {"id": qid, "image": {"bytes": picture["bytes"], "path": None}, "question": question, "answer": answer,
            "answer_type": answer_type(given_type, answer),
            "messages": conversation(task.prompt(question), task.answer(answer)), **extras}, None


def save_vqa(splits: dict[str, Any], report: PrepReport, staging: Path) -> None:
    """Refuse a prep without a training or test question (saying why rows were skipped), else save the splits,
    counted by answer_type."""
    from datasets import DatasetDict

    empty = [name for name in ("train", "test") if not len(splits[name])]
    if empty:
        raise PrepError(f"no usable question in the {' and '.join(empty)} split(s)", report)
    save_dataset(DatasetDict({name: splits[name] for name in ("train", "validation", "test")}), report, staging,
                 None, count_by="answer_type")


# ----------------------------------------------------------------------------- SLAKE
def _split_files(src: Path) -> dict[str, Path]:
    """Our split -> its JSON file (validation.json on the Hub, validate.json in the Slake1.0 zip)."""
    files, missing = {}, []
    for split, names in SPLIT_FILES.items():
        found = [src / name for name in names if (src / name).is_file()]
        if found:
            files[split] = found[0]
        else:
            missing.append(" or ".join(names))
    if not (src / "imgs").is_dir():
        missing.append("imgs/")
    if missing:
        raise PrepError(f"{src} has no {', '.join(missing)}: point --src at a download of BoKelvin/SLAKE (or the "
                        "Slake1.0 zip) with imgs.zip unzipped into imgs/")
    return files


def _records(path: Path) -> list[Any]:
    return read_json_file(path, list, "a JSON array of questions: is it SLAKE's?")


def _question(item: dict[str, Any], images: ImagesReadOnce, src: Path, task) -> Found:
    """(row, None) for a usable question, else (None, why)."""
    name = text(item.get("img_name"))
    return vqa_row(task, text(item.get("qid")), item.get("question"), item.get("answer"), item.get("answer_type"),
                   partial(images.get, name, partial(safe_image_path, name, src / "imgs"), name),
                   **{column: text(item.get(column)) for column in EXTRA_COLUMNS})


def _rows(records: list[Any], path: Path, split: str, args: argparse.Namespace, images: ImagesReadOnce, task,
          left_out: dict[str, Counter], kept: Counter, report: PrepReport):
    src = path.parent

    def generate():
        for index, item in enumerate(tqdm(records, desc=f"reading {split}", unit="question", mininterval=1.0)):
            where = f"{path.name}[{index}]"
            if not isinstance(item, dict):
                report.skip(where, "not a question record")
                continue
            language = text(item.get("q_lang")) or "(none)"
            if language not in args.languages:
                left_out[split][language] += 1
                continue
            fields, problem = _question(item, images, src, task)
            if problem:
                report.skip(where, problem)
                continue
            kept[split, language] += 1
            yield {**fields, "id": fields["id"] or f"{split}-{index}"}
    return generate


def _language_note(left_out: dict[str, Counter], languages: list[str], report: PrepReport) -> None:
    counts = "; ".join(f"{split} " + ", ".join(f"{n:,} {language}" for language, n in sorted(found.items()))
                       for split, found in left_out.items() if found)
    if counts:
        report.notes.append(f"questions in other languages left out (--languages {','.join(languages)}), not "
                            f"skipped: {counts}")


def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    args.frame, args.ct_windows = None, False  # read_image's DICOM options: SLAKE's images are not DICOMs
    task = get_task("free_text", protocol=args.protocol)
    files = _split_files(src)
    records = {split: _records(path) for split, path in files.items()}  # a broken file stops the prep at once
    report = vqa_report("slake", src, task, languages=args.languages, image_size=args.image_size,
                        files={split: path.name for split, path in files.items()})
    images, left_out, kept = ImagesReadOnce(args), defaultdict(Counter), Counter()
    with staged_output(out, args.overwrite) as staging:
        splits = {split: build_split(_rows(records[split], path, split, args, images, task, left_out, kept, report),
                                     vqa_features(EXTRA_COLUMNS), staging, split) for split, path in files.items()}
        _language_note(left_out, args.languages, report)
        images.note(report, sum(kept.values()))
        report.compare_count("test", kept["test", "en"], PUBLISHED_TEST, "English questions", REPORT_TABLE_2)
        save_vqa(splits, report, staging)
    return report


# ----------------------------------------------------------------------------- synthetic stand-in
# An image's colour and stripes name its body part and modality; its questions ask for these or whether it is of
# one modality (yes/no), in English and Chinese: every answer follows from the image.
KINDS = [("Brain", "Head", "MRI"), ("Lung", "Chest", "X-Ray"), ("Abdomen", "Abdomen", "CT")]  # location, part, modality
ZH_MODALITY = "这张图片的成像方式是什么?"  # What modality is used to take this image?
ZH_IS = "这是{modality}图像吗?"  # Is this a <modality> image?
IMAGES = {"train": 18, "validation": 6, "test": 6}


def _questions(image: int, qid: int) -> list[dict[str, Any]]:
    """The image's five questions (three English, two Chinese), SLAKE's record for each."""
    location, part, modality = KINDS[image % len(KINDS)]
    asked = KINDS[image // len(KINDS) % len(KINDS)][2]  # the modality a closed question names
    record = {"img_id": image, "img_name": f"xmlab{image}/source.jpg", "location": location, "modality": modality,
              "base_type": "vqa", "triple": ["vhead", "_", "_"]}
    questions = [("en", "What modality is used to take this image?", modality, "OPEN", "Modality"),
                 ("en", "Which part of the body does this image belong to?", part, "OPEN", "Position"),
                 ("en", f"Is this a {asked} image?", "Yes" if asked == modality else "No", "CLOSED", "Modality"),
                 ("zh", ZH_MODALITY, modality, "OPEN", "Modality"),
                 ("zh", ZH_IS.format(modality=asked), "是" if asked == modality else "否", "CLOSED", "Modality")]
    return [{**record, "question": question, "answer": answer, "q_lang": language, "answer_type": kind,
             "content_type": content, "qid": qid + k}
            for k, (language, question, answer, kind, content) in enumerate(questions)]


def _broken(qid: int) -> list[dict[str, Any]]:
    """Records a real download can hold: questions whose image is missing (two English, one Chinese: left out,
    not skipped), two whose image is corrupt, one without an answer, one without a question."""
    missing, corrupt = _questions(900, qid), _questions(901, qid + 10)
    no_answer = {k: v for k, v in _questions(0, qid + 20)[0].items() if k != "answer"}
    return [*missing[:2], missing[3], *corrupt[:2], no_answer, {**_questions(1, qid + 30)[1], "question": ""}]


def synthesize(out: Path, seed: int = 0) -> None:
    """SLAKE as on the Hub (train.json, validation.json, test.json, imgs/xmlabN/{source.jpg, mask.png}): 30 images
    of 96 px, five questions each; train.json also holds the broken records of `_broken` (imgs/xmlab901/source.jpg is
    cut short, imgs/xmlab900/ does not exist)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    image, qid = 0, 1000
    for split, count in IMAGES.items():
        records = []
        for _ in range(count):
            folder = out / "imgs" / f"xmlab{image}"
            folder.mkdir(parents=True, exist_ok=True)
            synthetic_tile(3 * (image % len(KINDS)), rng, size=96).save(folder / "source.jpg", quality=90)
            Image.new("L", (96, 96)).save(folder / "mask.png")
            records += _questions(image, qid)
            image, qid = image + 1, qid + 5
        if split == "train":
            records += _broken(9000)
        (out / f"{split}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    corrupt = out / "imgs/xmlab901/source.jpg"
    corrupt.parent.mkdir(exist_ok=True)
    synthetic_tile(0, rng, size=96).save(corrupt, quality=90)
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # cut short, as an interrupted unzip leaves it
