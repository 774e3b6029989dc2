"""A dataset in the Hugging Face format (VQA-RAD, SLAKE, PathVQA, PMC-VQA, your own), for the `classification`,
`free_text` or `findings` task:

    --src org/name           a dataset on the Hub (--config, --revision); with HF_HUB_OFFLINE=1 read from the local
                             Hugging Face cache (the snapshot `hf download` or `snapshot_download` left there)
    --src FOLDER             a folder `Dataset.save_to_disk` / `DatasetDict.save_to_disk` wrote, or a dataset
                             repository's files (Parquet, JSON lines or CSV, laid out as on the Hub:
                             data/train-*.parquet)
    --src FILE               one Parquet, JSON lines or CSV file (a Parquet file written by `datasets` embeds
                             its images)

Images as `datasets.Image` (embedded bytes, or paths inside the source's folder), a list of images (several an
example), or a column of paths; the other columns by the flags of `data_prep table` (data_prep/_tabular.py:
--label-column, --answer-column, --question-column, --split-column, --group-column, --id-column; for findings
--finding-columns or --findings-column, whose list may be a list of names or of class labels). The dataset's
own splits are kept (train, validation and test, and the aliases val, valid, dev); a missing validation or test
split is drawn from train, per class and by group, as `table` draws it; a split by any other name is not read
(the report names it). Rows without an image, with unreadable image bytes or an empty answer are skipped,
counted and listed in prep_report.json as `split[row]`.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from data_prep import _own_data, _tabular
from data_prep._common import PrepError, PrepReport
from data_prep._tabular import RowSource

SOURCE_KIND = "any"  # a Hub id, a folder or a file
FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}  # datasets' loaders


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _tabular.add_arguments(parser)
    parser.add_argument("--config", default=None, help="the dataset's configuration (subset), where it has several")
    parser.add_argument("--revision", default=None, help="a branch, tag or commit of the Hub dataset (default: main)")


# ----------------------------------------------------------------------------- loading
def load_source(src: str, args: argparse.Namespace) -> tuple[dict, Path | None]:
    """({split: Dataset}, the folder image paths are relative to) for a Hub id, a folder or a file. A single
    file or a lone Dataset has no splits of its own: its one split is `None` (its rows may name theirs)."""
    from datasets import Dataset, load_dataset, load_from_disk

    path = Path(src).expanduser()
    try:
        if path.is_file():
            if path.suffix.lower() not in FILE_BUILDERS:
                raise PrepError(f"--src {path.name}: a file is one of {', '.join(FILE_BUILDERS)}")
            loaded = load_dataset(FILE_BUILDERS[path.suffix.lower()], data_files=str(path), split="train")
            return {None: loaded}, path.parent
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():  # save_to_disk's marks
                loaded = load_from_disk(str(path))
            else:
                loaded = load_dataset(str(path), name=args.config)
            return ({None: loaded} if isinstance(loaded, Dataset) else dict(loaded)), path
        if src.count("/") != 1 or src.startswith((".", "/")):
            raise PrepError(f"--src {src}: neither a file, a folder, nor a Hub dataset id (org/name)")
        return _load_from_hub(src, args)
    except PrepError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets and the Hub raise many kinds: one line that says which
        raise PrepError(f"--src {src}: cannot load it ({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None


def _load_from_hub(repo_id: str, args: argparse.Namespace) -> tuple[dict, Path | None]:
    """Online, `datasets.load_dataset` (it downloads the configuration's files only). Offline, the snapshot in
    the Hugging Face cache, loaded as a local folder: `load_dataset(repo_id)` offline only finds datasets that
    `datasets` itself prepared before, not what `hf download` left in the cache."""
    from datasets import load_dataset
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        try:
            snapshot = Path(snapshot_download(repo_id, repo_type="dataset", revision=args.revision,
                                              local_files_only=True))
        except LocalEntryNotFoundError:
            try:
                return dict(load_dataset(repo_id, name=args.config, revision=args.revision)), None
            except Exception:  # noqa: BLE001 - not in datasets' cache either
                raise PrepError(f"--src {repo_id}: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1: download "
                                f"it once (`hf download {repo_id} --repo-type dataset`) or go online") from None
        return dict(load_dataset(str(snapshot), name=args.config)), snapshot
    return dict(load_dataset(repo_id, name=args.config, revision=args.revision)), None


def split_of(name: str | None) -> str | None:
    """Our split for a dataset's split name: train, validation, test (and aliases), None for the others."""
    return _own_data.SPLIT_NAMES.get(name.lower()) if name else None


# ----------------------------------------------------------------------------- prepare
def prepare(src: Path, out: Path, args: argparse.Namespace) -> PrepReport:
    source = str(src)
    report = _tabular.new_report("hub", source, args)
    if args.config or args.revision:
        report.options.update(config=args.config, revision=args.revision)
    splits, root = load_source(source, args)
    rows = []
    for name, dataset in splits.items():
        if name is not None and split_of(name) is None:
            report.skip(f"split {name}", f"not read ({len(dataset)} rows): only train, validation and test are")
            continue
        rows += _tabular.dataset_rows(dataset, name or Path(source).name, args, split=split_of(name))
    return _tabular.prepare_rows(RowSource(rows, source, args.image_root or root), out, args, report)


# ----------------------------------------------------------------------------- synthetic stand-in
STANDIN_CLASSES = ("benign", "malignant", "normal_tissue")
STANDIN_OPEN_ANSWERS = {"benign": "benign lesion", "malignant": "malignant lesion", "normal_tissue": "normal tissue"}
SPLIT_SIZES = {"train": 36, "validation": 6, "test": 12}


def standin_rows(seed: int = 0) -> dict[str, list[dict]]:
    """split -> rows of a medical VQA dataset as the Hub holds them: an image (PNG bytes), a question, an answer,
    a class label and a patient; open questions ("What does this image show?") and closed yes/no ones. The
    training split also holds the rows a Hub dataset goes wrong with: bytes that are no image, no image, an empty
    answer."""
    import io

    import numpy as np

    from data_prep._common import synthetic_tile

    rng = np.random.default_rng(seed)

    def png(label: int):
        buffer = io.BytesIO()
        synthetic_tile(3 * label, rng, size=64).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    splits, number = {}, 0
    for split, size in SPLIT_SIZES.items():
        rows = []
        for i in range(size):
            label = i % len(STANDIN_CLASSES)
            name = STANDIN_CLASSES[label]
            closed = i % 2 == 1
            rows.append({"image": png(label), "label": label,
                         "question": "Is this lesion malignant?" if closed else "What does this image show?",
                         "answer": ("yes" if name == "malignant" else "no") if closed else STANDIN_OPEN_ANSWERS[name],
                         "patient": f"PAT-{number // 2:04d}"})
            number += 1
        splits[split] = rows
    broken = dict(splits["train"][0], patient="PAT-9000")
    splits["train"] += [{**broken, "image": {"bytes": b"not an image", "path": "corrupt.png"}},
                        {**broken, "image": None}, {**broken, "answer": ""}]
    return splits


def standin_features():
    from datasets import ClassLabel, Features, Image, Value

    return Features({"image": Image(), "label": ClassLabel(names=list(STANDIN_CLASSES)), "question": Value("string"),
                     "answer": Value("string"), "patient": Value("string")})


def synthesize(out: Path, seed: int = 0) -> None:
    """A small VQA dataset the three ways users have one: a dataset repository as on the Hub (`repo/`: README.md
    with its configuration, data/<split>-00000-of-00001.parquet), a `save_to_disk` folder (`saved/`) and one
    Parquet file with a split column (`vqa.parquet`), each written by `datasets` with the images embedded."""
    from datasets import Dataset, DatasetDict, concatenate_datasets

    features = standin_features()
    splits = DatasetDict({name: Dataset.from_list(rows, features=features)
                          for name, rows in standin_rows(seed).items()})
    (out / "repo" / "data").mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        split.to_parquet(str(out / "repo" / "data" / f"{name}-00000-of-00001.parquet"))
    (out / "repo" / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        + "".join(f"  - split: {name}\n    path: data/{name}-*\n" for name in splits)
        + "license: cc-by-4.0\n---\n# A synthetic medical VQA stand-in (medtune data_prep synthetic hub)\n")
    splits.save_to_disk(str(out / "saved"))
    whole = concatenate_datasets([split.add_column("split", [name] * len(split)) for name, split in splits.items()])
    whole.to_parquet(str(out / "vqa.parquet"))
