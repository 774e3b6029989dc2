"""Model card, Hub upload and secrets. The Hub's servers cannot be reached from here: `HfApi` is replaced by a
stub that records the calls (the only mock in the suite); which files an upload takes is computed by
huggingface_hub's own pattern filter. The card is read back with huggingface_hub's own parser."""
from __future__ import annotations

import pytest
from huggingface_hub.utils import filter_repo_objects

from medtune import export
from medtune.errors import MedtuneError
from tests.conftest import PLANTED_TOKEN


class RecordingHfApi:
    calls: list[tuple[str, dict]] = []

    def __init__(self, *args, **kwargs):
        assert not args and not kwargs, "the token must come from the environment, not be passed around"

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        from pathlib import Path

        root = Path(kwargs["folder_path"])
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        kwargs["files"] = sorted(filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns"),
                                                     ignore_patterns=kwargs.get("ignore_patterns")))
        kwargs["contents"] = {name: (root / name).read_bytes() for name in kwargs["files"]}  # as uploaded
        self.calls.append(("upload_folder", kwargs))


@pytest.fixture()
def hub(monkeypatch):
    import huggingface_hub

    RecordingHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    return RecordingHfApi.calls


def test_push_is_private_by_default_and_uploads_only_the_adapter_card_and_metrics(demo_run, hub):
    run = demo_run[0] / "run-lora"
    export.export(run, push=True, repo_id="org/medgemma-crc")
    (name, create), (_, upload) = hub
    assert name == "create_repo" and create["private"] is True and create["repo_id"] == "org/medgemma-crc"
    files = upload["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.json",
            "processor_config.json", "eval/finetuned.json", "eval/comparison.md"} <= set(files)
    assert not [f for f in files if f.endswith((".jsonl", ".bin", ".arrow")) or f.startswith(("tensorboard", "merged"))]


def test_public_only_when_asked(demo_run, hub):
    export.export(demo_run[0] / "run-lora", push=True, repo_id="org/x", private=False)
    assert hub[0][1]["private"] is False


def test_push_needs_a_repo_id(demo_run, hub):
    with pytest.raises(MedtuneError, match="--repo-id"):
        export.export(demo_run[0] / "run-lora", push=True)
    assert hub == []


def test_the_hub_token_is_in_no_file_a_run_writes(demo_run):
    workdir = demo_run[0]
    leaked = [p for p in workdir.rglob("*") if p.is_file() and PLANTED_TOKEN.encode() in p.read_bytes()]
    assert leaked == []
    assert PLANTED_TOKEN not in demo_run[1].stdout + demo_run[1].stderr


def test_the_model_card_says_how_the_figures_were_made(demo_run):
    from medtune.config import load_recipe
    from medtune.model_card import model_card

    run = demo_run[0] / "run-lora"
    assert "(test split, greedy decoding)" in (run / "README.md").read_text()
    scored = load_recipe(run / "recipe.yaml", ["eval.mode=score"])
    assert "(test split, option scoring)" in str(model_card(scored, run))


def test_the_card_parses_and_its_model_index_holds_the_fine_tuned_metrics(demo_run):
    import json

    from huggingface_hub import ModelCard

    run = demo_run[0] / "run-lora"
    card = ModelCard.load(run / "README.md")
    metrics = json.loads((run / "eval/finetuned.json").read_text())["metrics"]
    shown = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert shown == {k: v for k, v in metrics.items() if k != "n" and isinstance(v, (int, float))}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert card.data.library_name == "peft" and card.data.base_model_relation == "adapter"
    assert card.data.base_model is None  # the tiny model is a local folder: no local path as base_model
    text = card.text
    assert "tiny (a local model)" in text and "Unparsable answers" in text and "data_prep skipped" in text
    assert "![finetuned_confusion_matrix](eval/finetuned_confusion_matrix.png)" in text
    assert "training wall time" in text and "CPU (" in text
    assert "4 epoch(s), effective batch 8 (8 x 1 accumulation x 1 process(es)), learning rate 0.003 (linear)" in text


def test_the_demo_card_holds_no_placeholder_local_path_identifier_or_token(demo_run):
    from pathlib import Path

    from datasets import load_from_disk

    from medtune.config import load_recipe
    from medtune.model_card import model_card

    workdir = demo_run[0]
    run = workdir / "run-lora"
    without_repo = str(model_card(load_recipe(run / "recipe.yaml"), run))
    assert 'PeftModel.from_pretrained(base, "path/to/this/folder")' in without_repo  # no repo id given: say so
    ids = load_from_disk(str(workdir / "data"))["test"]["id"]
    for card in ((run / "README.md").read_text(), without_repo):
        assert "https://github.com/)" not in card and "<this repo>" not in card
        assert str(workdir) not in card and "/tmp/" not in card and str(Path.home()) not in card
        assert not [i for i in ids if i in card]
        assert PLANTED_TOKEN not in card


def test_a_pushed_card_names_its_repo_and_the_upload_names_no_local_base(demo_run, hub):
    import json

    run = demo_run[0] / "run-lora"
    export.export(run, push=True, repo_id="org/medgemma-crc")
    uploaded = hub[1][1]["contents"]
    assert 'PeftModel.from_pretrained(base, "org/medgemma-crc")' in uploaded["README.md"].decode()
    assert json.loads(uploaded["adapter_config.json"])["base_model_name_or_path"] is None  # tiny: a local folder
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"]  # the run's own stays
    assert not [p for p in run.iterdir() if p.name.startswith(".hub-upload-")]


def test_a_run_exports_where_its_data_is_not(demo_run, tmp_path):
    """A finished run copied to another machine (the prepared dataset left behind) still gets its card."""
    import shutil

    import yaml

    moved = tmp_path / "run-lora"
    shutil.copytree(demo_run[0] / "run-lora", moved, ignore=shutil.ignore_patterns("merged", "tensorboard"))
    recipe = yaml.safe_load((moved / "recipe.yaml").read_text())
    recipe["data"]["path"] = str(tmp_path / "gone")
    (moved / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    export.export(moved, repo_id="org/medgemma-crc")
    card = (moved / "README.md").read_text()
    assert "NCT-CRC-HE-100K" in card and 'PeftModel.from_pretrained(base, "org/medgemma-crc")' in card


@pytest.mark.parametrize("layout, expected", [
    ("hub-cache", "google/medgemma-4b-it"), ("config-records-id", "google/medgemma-4b-it"), ("plain", None)])
def test_a_base_model_from_a_local_folder_is_named_by_its_hub_id_or_said_to_be_local(layout, expected, demo_run,
                                                                                      tmp_path):
    import json

    from huggingface_hub import ModelCard

    from medtune.config import load_recipe
    from medtune.model_card import model_card

    folder = tmp_path / ("models--google--medgemma-4b-it/snapshots/0123abc" if layout == "hub-cache" else "base")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(
        {"_name_or_path": "google/medgemma-4b-it"} if layout == "config-records-id" else {}))
    run = demo_run[0] / "run-lora"
    card = ModelCard(str(model_card(load_recipe(run / "recipe.yaml", [f"model.name_or_path={folder}"]), run)))
    assert card.data.base_model == expected and str(tmp_path) not in str(card)
    if expected:  # a MedGemma derivative carries MedGemma's terms
        assert (card.data.license, card.data.license_name) == ("other", "health-ai-developer-foundations")
        assert card.data.license_link == "https://developers.google.com/health-ai-developer-foundations/terms"
    else:
        assert card.data.license is None and "base (a local model)" in str(card)
