"""Model loading on the tiny model through the real `from_pretrained` path: LoRA placement, QLoRA's
unquantized modules, precision."""
from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from medtune.config import load_recipe
from medtune.model import load_model, lora_config, resolve_precision
from tests.conftest import REPO

RECIPE = REPO / "recipes" / "tissue_classification" / "qlora.yaml"


def _recipe(small_crc, *overrides):
    return load_recipe(RECIPE, ["model.name_or_path=tiny", f"data.path={small_crc / 'data'}", *overrides])


def _lora_modules(model):
    return {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A." in name}


def test_precision_is_fp32_on_cpu_and_never_fp16():
    assert resolve_precision("auto") == ("bf16" if torch.cuda.is_available() else "fp32")
    assert resolve_precision("bf16") == "bf16"


def test_qlora_quantizes_the_language_model_only(small_crc):
    import bitsandbytes as bnb

    model = load_model(_recipe(small_crc), "fp32")
    four_bit = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert four_bit and all(".language_model." in n for n in four_bit)
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)
    vision_linears = [m for n, m in model.named_modules() if "vision_tower" in n and isinstance(m, torch.nn.Linear)]
    assert vision_linears and not any(isinstance(m, bnb.nn.Linear4bit) for m in vision_linears)
    assert model.model.multi_modal_projector.mm_input_projection_weight.dtype == torch.float32


def test_lora_targets_the_language_models_projections_by_default(small_crc):
    recipe = _recipe(small_crc, "quantization.load_in_4bit=false")
    model = get_peft_model(load_model(recipe, "fp32"), lora_config(recipe))
    targets = _lora_modules(model)
    assert targets and all(".language_model." in t for t in targets)
    assert {t.rsplit(".", 1)[1] for t in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                     "up_proj", "down_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # vision tower, projector, embeddings frozen


@pytest.mark.parametrize("option", ["lora.adapt_vision_tower=true", "lora.train_projector=true"])
def test_vision_side_can_be_adapted_on_request(small_crc, option):
    recipe = _recipe(small_crc, "quantization.load_in_4bit=false", option)
    model = get_peft_model(load_model(recipe, "fp32"), lora_config(recipe))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if "vision" in option:
        assert any("vision_tower" in t for t in _lora_modules(model))
    else:
        assert any("multi_modal_projector" in n for n in trainable)


def test_the_vision_tower_attends_with_sdpa_and_sees_what_eager_sees(small_crc):
    recipe = _recipe(small_crc, "quantization.load_in_4bit=false")
    model = load_model(recipe, "fp32")
    assert model.model.vision_tower.config._attn_implementation == "sdpa"
    assert model.model.language_model.config._attn_implementation == "sdpa"  # the recipe's (test_training_step.py)
    eager = load_model(_recipe(small_crc, "quantization.load_in_4bit=false", "model.vision_attn_implementation=eager"),
                       "fp32")
    assert eager.model.vision_tower.config._attn_implementation == "eager"
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.model.vision_tower(pixel_values=pixels).last_hidden_state,
                                   eager.model.vision_tower(pixel_values=pixels).last_hidden_state)
