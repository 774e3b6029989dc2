"""Hub upload and secrets. The Hub's servers cannot be reached from here: `HfApi` is replaced by a stub that
records the calls (the only mock in the suite); which files an upload takes is computed by huggingface_hub's
own pattern filter."""
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

    run = demo_run[0] / "run-lora"
    assert "(test split, greedy decoding)" in (run / "README.md").read_text()
    scored = load_recipe(run / "recipe.yaml", ["eval.mode=score"])
    assert "(test split, option scoring)" in export.model_card(scored, run)
