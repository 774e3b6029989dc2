"""Export: the model card beside the adapter (medtune/model_card.py), an optional merged model, and the upload to
the Hub.

The Hub token is read by huggingface_hub from HF_TOKEN or the login cache at upload time; it is never
passed around, printed or written anywhere. Uploads are private unless asked otherwise, and contain the
adapter, processor, card and metrics only (never dataset files, predictions or checkpoints).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from medtune import medsiglip
from medtune.config import Recipe, load_recipe
from medtune.errors import MedtuneError
from medtune.model_card import hub_base_model, write_model_card
from medtune.run_folder import COMPARISON, EVAL_DIR, EVALUATIONS, RECIPE

HUB_FILES = [  # what an upload may contain
    "README.md", "adapter_config.json", "adapter_model.safetensors", "processor_config.json",
    "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "chat_template.jinja", "chat_template.json",
    *(f"{EVAL_DIR}/{name}.json" for name in EVALUATIONS), f"{EVAL_DIR}/{COMPARISON}", f"{EVAL_DIR}/*.png",
    medsiglip.PROBE_FILE,  # a MedSigLIP probe (medtune/encoder.py)
]


def merge_adapter(recipe: Recipe, out_dir: Path) -> Path:
    """Base model (unquantized, in the recipe's precision) + adapter, merged into OUTPUT_DIR/merged."""
    from peft import PeftModel

    from medtune.model import load_model, load_processor, model_path, resolve_precision

    base = load_model(recipe, resolve_precision(recipe.model.precision), quantize=False)
    merged = PeftModel.from_pretrained(base, str(out_dir)).merge_and_unload()
    final, staging = out_dir / "merged", out_dir / ".merged.partial"
    shutil.rmtree(staging, ignore_errors=True)
    # transformers writes the weights under the names the base checkpoint used (it undoes its loading renames):
    # Google's, which serving engines read. Checked below, not assumed.
    merged.save_pretrained(staging)
    try:
        check_same_layout(staging, model_path(recipe))
    except MedtuneError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # the processor (its chat template) and the generation config (greedy defaults, the end-of-turn stop) travel
    # with the weights: a server asks and stops as evaluation did
    load_processor(recipe).save_pretrained(staging)
    write_model_card(recipe, out_dir, merged=True, path=staging / "README.md")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)
    return final


def weight_shapes(folder_or_repo: str | Path) -> dict[str, list[int]]:
    """Every weight's name and shape in a checkpoint's safetensors files, read from their headers only: a local
    folder, or a Hub repository (huggingface_hub reads the headers remotely, no weights downloaded)."""
    folder = Path(folder_or_repo)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:  # the copy the merge just loaded, in the Hub cache: no network
            folder = Path(snapshot_download(str(folder_or_repo), allow_patterns=["*.safetensors"],
                                            local_files_only=True))
        except Exception:  # not cached (weights from elsewhere): the Hub reads the headers remotely
            from huggingface_hub import get_safetensors_metadata

            metadata = get_safetensors_metadata(str(folder_or_repo))
            return {name: list(info.shape) for file in metadata.files_metadata.values()
                    for name, info in file.tensors.items()}
    from safetensors import safe_open

    shapes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            shapes.update({name: list(f.get_slice(name).get_shape()) for name in f.keys()})
    return shapes


def check_same_layout(written: Path, base: str | Path) -> None:
    """The merged model holds the base checkpoint's weights, by name and shape (what a serving engine loads the
    base by), or one line naming the first difference."""
    ours = weight_shapes(written)
    try:
        theirs = weight_shapes(base)
    except Exception as e:  # offline, or a gated repository without a token: the merge itself is done
        print(f"the merged weights' names could not be compared with {base}'s ({type(e).__name__}): not checked")
        return
    if ours == theirs:
        return
    extra, missing = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    reshaped = sorted(name for name in ours.keys() & theirs.keys() if ours[name] != theirs[name])
    if extra or missing:
        raise MedtuneError(f"the merged model's weights are not named as {base}'s: {len(extra)} names the base "
                           f"has not (first: {(extra or ['-'])[0]}), {len(missing)} of the base's names missing "
                           f"(first: {(missing or ['-'])[0]})")
    first = reshaped[0]
    raise MedtuneError(f"the merged model's {first} is {ours[first]}, {base}'s is {theirs[first]} "
                       f"({len(reshaped)} weights differ in shape)")


def hub_adapter_config(out_dir: Path, base: str | None) -> dict:
    """The run's adapter_config.json as uploaded: the base model named by its Hub id, never by a local path
    (PEFT records the folder it loaded from; None when the base model is local and records no Hub id)."""
    config = json.loads((out_dir / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    return config


def push_to_hub(out_dir: Path, repo_id: str, private: bool = True, base: str | None = None) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    if not any((out_dir / name).is_file() for name in ("adapter_config.json", medsiglip.PROBE_FILE)):
        raise MedtuneError(f"{out_dir} holds no adapter (adapter_config.json) or probe (probe.safetensors): train "
                           "first")
    api = HfApi()  # token: HF_TOKEN or the login cache, read by huggingface_hub itself
    url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    # Staged: the allow-listed files (linked, not copied, where the file system allows) with the adapter config
    # as uploaded, so that the run's own files stay as they are.
    with tempfile.TemporaryDirectory(prefix=".hub-upload-", dir=out_dir) as staging:
        files = [p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                 if p.is_file() and not p.is_relative_to(staging)]
        for name in filter_repo_objects(files, allow_patterns=HUB_FILES):
            target = Path(staging) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if name == "adapter_config.json":
                target.write_text(json.dumps(hub_adapter_config(out_dir, base), indent=2), encoding="utf-8")
                continue
            try:
                os.link(out_dir / name, target)
            except OSError:
                shutil.copy2(out_dir / name, target)
        api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model", allow_patterns=HUB_FILES,
                          commit_message="Upload medtune adapter")
    return str(url)


def export(out_dir: Path, merge: bool = False, push: bool = False, repo_id: str | None = None,
           private: bool = True) -> None:
    """`medtune export OUTPUT_DIR`: rewrite the card from the run's recipe and results (with the repo id in its
    usage snippet when one is given), merge, push."""
    recipe_file = out_dir / RECIPE
    if not recipe_file.is_file():
        raise MedtuneError(f"{out_dir} is not a medtune run (no {RECIPE}): pass the training output_dir")
    if push and not repo_id:
        raise MedtuneError("--push needs --repo-id ORG/NAME")
    recipe = load_recipe(recipe_file, check_data=False)  # a finished run needs no data: export it anywhere
    print(f"model card: {write_model_card(recipe, out_dir, repo_id)}")
    if merge:
        print(f"merged model: {merge_adapter(recipe, out_dir)}")
    if push:
        url = push_to_hub(out_dir, repo_id, private, hub_base_model(recipe.model.name_or_path))
        print(f"uploaded to {url} ({'private' if private else 'public'})")
