"""What sets the MedSigLIP family apart from MedGemma, in one place: how a recipe is told to be one (its name,
`encoder.method`), the keys each family refuses, and how its runs are labelled, described on their model card
and loaded back. The core asks here once (the recipe checks, the card, `medtune compare`, the commands) and never
tests for SigLIP itself; `medtune/encoder.py` runs the family's methods.

Light: no torch, no transformers (the recipe checks import it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.errors import MedtuneError, RecipeError
from medtune.tasks import is_multiple_choice
from medtune.tiny import TINY_ENCODER, TINY_NAME

VISION_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]  # SigLIP's linear layers (both
# families': MedGemma's tower is SigLIP too)
PROBE_FILE = "probe.safetensors"  # a linear probe's classifier, beside the run's other files
# method -> (its name in tables, what the run publishes)
METHODS = {"probe": ("linear probe", "classifier on the image embeddings"),
           "lora": ("LoRA", "adapter with a classification head"), "zeroshot": ("zero-shot", "evaluation")}
# What only a MedGemma recipe sets: refused in a MedSigLIP one (encoder.method), which has no language model
MEDGEMMA_ONLY_KEYS = {
    "model": ("attn_implementation", "vision_attn_implementation", "compile_decoder_layers", "prompt_format"),
    "lora": ("target_modules", "adapt_vision_tower", "train_projector"), "quantization": None,  # None: any key
    "eval": ("mode", "max_new_tokens", "validation_generations", "benchmarks"), "export": ("merge",),
}


def is_encoder_name(name: str) -> bool:
    """A MedSigLIP model by its name (google/medsiglip-448, a local copy, the tiny twin)."""
    return name == TINY_ENCODER or "siglip" in Path(name).name.lower()


def is_encoder_recipe(recipe) -> bool:
    return recipe.encoder.method is not None


def resolve_twin(recipe) -> None:
    """`tiny` runs every recipe offline: a MedSigLIP recipe's tiny model is MedSigLIP's twin."""
    if is_encoder_recipe(recipe) and recipe.model.name_or_path == TINY_NAME:
        recipe.model.name_or_path = TINY_ENCODER


def _changed_keys(recipe, section: str, raw: dict[str, Any]) -> list[str]:
    """The keys of a section that the recipe sets to something else than the default (a saved recipe.yaml
    spells out every default)."""
    default = type(getattr(recipe, section))()
    return [k for k, v in (raw.get(section) or {}).items() if v != getattr(default, k, v)]


def check_family(recipe, raw: dict[str, Any], task) -> None:
    """A MedSigLIP recipe (encoder.method) names an encoder and no MedGemma key; a MedGemma recipe the reverse."""
    name = recipe.model.name_or_path
    if not is_encoder_recipe(recipe):
        if is_encoder_name(name):
            raise RecipeError("encoder.method", f"{name} is an image encoder: set encoder.method to zeroshot, probe "
                                                "or lora (recipes/<task>/medsiglip-*.yaml)")
        extra = [k for k in _changed_keys(recipe, "encoder", raw) if k != "method"]
        if extra:
            raise RecipeError(f"encoder.{extra[0]}", "only for a MedSigLIP recipe (encoder.method): remove it")
        return
    if not is_encoder_name(name):
        raise RecipeError("model.name_or_path", f"encoder.method needs MedSigLIP (google/medsiglip-448, or "
                                                f"{TINY_ENCODER} offline), not {name}")
    if not is_multiple_choice(task):
        raise RecipeError("task.name", f"MedSigLIP classifies images: {task.name} is not a classification task")
    for section, keys in MEDGEMMA_ONLY_KEYS.items():
        given = [k for k in _changed_keys(recipe, section, raw) if keys is None or k in keys]
        if given:
            raise RecipeError(f"{section}.{given[0]}", "a MedGemma setting: a MedSigLIP recipe (encoder.method) "
                                                       "has no language model; remove it")
    if not recipe.encoder.templates or not all(isinstance(t, str) and "{}" in t for t in recipe.encoder.templates):
        raise RecipeError("encoder.templates", "a list of texts, each with {} where the class's option text goes")
    if not recipe.encoder.probe_c or not all(isinstance(c, (int, float)) and c > 0 for c in recipe.encoder.probe_c):
        raise RecipeError("encoder.probe_c", "a list of positive numbers, e.g. [0.01, 0.1, 1, 10]")


def refuse_in(recipe, command: str) -> None:
    """The commands that evaluate or inspect a MedGemma model take no MedSigLIP recipe."""
    if is_encoder_recipe(recipe):
        raise MedtuneError(f"encoder.method: `medtune {command}` is for MedGemma recipes; a MedSigLIP recipe "
                           "evaluates as it runs (medtune train RECIPE)")


# ----------------------------------------------------------------------------- how runs are told apart
def compare_labels(recipe: dict[str, Any]) -> dict[str, str] | None:
    """A MedSigLIP run's baseline and fine-tuned rows in `medtune compare` (from its saved recipe), else None."""
    method = (recipe.get("encoder") or {}).get("method")
    return {"baseline": "zero-shot", "finetuned": METHODS[method][0]} if method else None


def card_facts(recipe, base: str | None, repo_id: str | None, classes: int) -> dict[str, Any] | None:
    """What a MedSigLIP run's model card says differently (None for a MedGemma run): its method, what it
    publishes (never titled an adapter: a probe is a classifier), the method line, the Hub's library and pipeline
    tag, and the loading snippet."""
    if not is_encoder_recipe(recipe):
        return None
    method, what = METHODS[recipe.encoder.method]
    return {"method": method, "what": what, "adapter": False, "method_line": _method_line(recipe),
            "library_name": "peft" if recipe.encoder.method == "lora" else None,
            "pipeline_tag": "image-classification", "family_tag": "medsiglip",
            "eval_mode": "zero-shot scores and the classifier's",
            "snippet": snippet(recipe.encoder.method, base, repo_id, classes)}


def _method_line(recipe) -> str:
    lora = recipe.lora
    if recipe.encoder.method == "probe":
        return ("logistic regression (scikit-learn) on the L2-normalised image embeddings, its C chosen on the "
                f"validation split from {recipe.encoder.probe_c} (eval/finetuned.json names it)")
    if recipe.encoder.method == "lora":
        return (f"LoRA: rank {lora.r}, alpha {lora.alpha}, dropout {lora.dropout} on the vision tower's "
                f"{', '.join(VISION_LORA_TARGETS)}; a classification head trained whole")
    return f"zero-shot: each image against {recipe.encoder.templates} filled with the option texts"


def snippet(method: str, base: str | None, repo_id: str | None, classes: int) -> str:
    """How to apply a MedSigLIP probe or LoRA classifier."""
    base_ref = base or "path/to/the/local/base/model"
    where = repo_id or "path/to/this/folder"
    if method == "lora":
        return (f"from peft import PeftModel\nfrom transformers import AutoProcessor, SiglipForImageClassification\n\n"
                f"base = SiglipForImageClassification.from_pretrained(\"{base_ref}\", num_labels={classes})\n"
                f"model = PeftModel.from_pretrained(base, \"{where}\")\n"
                f"processor = AutoProcessor.from_pretrained(\"{where}\")\n"
                f"probabilities = model(**processor(images=image, return_tensors=\"pt\")).logits.softmax(-1)")
    return (f"import torch\nfrom huggingface_hub import hf_hub_download\nfrom safetensors.torch import load_file\n"
            f"from transformers import AutoModel, AutoProcessor\n\n"
            f"model = AutoModel.from_pretrained(\"{base_ref}\")\n"
            f"processor = AutoProcessor.from_pretrained(\"{base_ref}\")\n"
            + (f"probe = load_file(hf_hub_download(\"{repo_id}\", \"{PROBE_FILE}\"))\n" if repo_id else
               f"probe = load_file(\"{where}/{PROBE_FILE}\")\n")
            + "features = model.get_image_features(**processor(images=image, return_tensors=\"pt\")).pooler_output\n"
              "logits = torch.nn.functional.normalize(features, dim=-1) @ probe[\"coef\"].T + probe[\"intercept\"]\n"
              "probabilities = logits.softmax(-1)  # two classes: one column, torch.sigmoid(logits) is the second's")
