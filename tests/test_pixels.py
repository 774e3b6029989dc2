"""Model-ready pixels (medtune.pixels): the model sees the image processor's own values within resampling
noise, on every stand-in, whether the image is enlarged, reduced or already at size; the training batches
carry the same tokens and labels; a processor whose work medtune cannot do is used as it is.

The bound (torch's 8-bit antialiased resize against PIL's, the same filter): identical (to float rounding,
1e-4 of an 8-bit level) where nothing is resized or an image is enlarged by a whole factor (CRC's 224 px tiles
to MedGemma's 896, stored 896 px films); at most one 8-bit level where images are reduced (the tiny model's
64 px), two where they are enlarged by a fraction (the 256 px SIIM stand-in to 896); 0.1 level on average.
"""
from __future__ import annotations

import copy

import pytest
import torch
from datasets import load_from_disk
from transformers import AutoModelForImageTextToText, AutoProcessor

from medtune.collator import build_collator
from medtune.inference import PromptInputs
from medtune.pixels import PixelNormalizer, model_ready_inputs
from medtune.tiny import tiny_checkpoint_dir

LEVEL = 2 / 255  # one 8-bit level after MedGemma's normalisation (mean 0.5, std 0.5)


@pytest.fixture(scope="module")
def tiny():
    return (AutoModelForImageTextToText.from_pretrained(tiny_checkpoint_dir()).eval(),
            AutoProcessor.from_pretrained(tiny_checkpoint_dir()))


def _at_size(processor, size: int):
    """The processor with its images resized to `size` (896: MedGemma's geometry)."""
    resized = copy.copy(processor)
    resized.image_processor = copy.copy(processor.image_processor)
    resized.image_processor.size = {"height": size, "width": size}
    return resized


def _rows(path, n=6):
    test = load_from_disk(str(path))["test"]
    return [test[i] for i in range(min(n, len(test)))]


@pytest.mark.parametrize("size", [896, 64])
@pytest.mark.parametrize("task", ["tissue_classification", "pneumothorax", "report_generation"])
def test_the_model_sees_the_image_processors_values(prepared, tiny, task, size):
    model, processor = tiny
    processor = _at_size(processor, size)
    rows = _rows(prepared[task])
    plain = PromptInputs(processor, None, torch.float32)(rows)
    ready_processor, pixels = model_ready_inputs(model, processor)
    ready = PromptInputs(ready_processor, pixels, torch.float32)(rows)

    assert ready["pixel_values"].dtype == torch.uint8  # a quarter of float32's bytes to copy to the device
    assert torch.equal(ready["input_ids"], plain["input_ids"])
    assert torch.equal(ready["attention_mask"], plain["attention_mask"])
    difference = (PixelNormalizer(processor.image_processor)(ready["pixel_values"]) - plain["pixel_values"]).abs()
    sizes = {r["image"].size[0] for r in rows}
    if sizes <= {size} or all(size % s == 0 for s in sizes):  # at size, or enlarged by a whole factor
        assert difference.max() <= 1e-4 * LEVEL
    else:
        largest = 1 if all(s > size for s in sizes) else 2  # reduced / enlarged by a fraction
        assert difference.max() <= largest * LEVEL * 1.0001 and difference.mean() <= 0.1 * LEVEL
    assert (task, size) not in {("tissue_classification", 896), ("report_generation", 896)} or \
        difference.max() <= 1e-4 * LEVEL  # 224 px tiles enlarged 4x, 896 px films: exact


def test_uint8_pixels_reach_the_tower_normalised_and_give_the_same_logits(prepared, tiny):
    model, processor = tiny
    rows = _rows(prepared["pneumothorax"])
    ready_processor, pixels = model_ready_inputs(model, processor)
    ready = PromptInputs(ready_processor, pixels, torch.float32)(rows)
    plain = PromptInputs(processor, None, torch.float32)(rows)  # float values pass the tower's hook untouched
    with torch.no_grad():
        torch.testing.assert_close(model(**ready).logits, model(**plain).logits, rtol=0, atol=1e-4)
    # the processor that is saved with the adapter is left as it was
    assert processor.image_processor.do_normalize and processor.image_processor.do_resize


def test_training_batches_carry_the_same_tokens_labels_and_pixels(prepared, tiny):
    model, processor = tiny
    train = load_from_disk(str(prepared["tissue_classification"]))["train"]
    rows = [train[i] for i in range(4)]
    plain = build_collator(processor)(rows)
    ready_processor, pixels = model_ready_inputs(model, processor)
    ready = build_collator(ready_processor, pixels=pixels)(rows)
    assert ready["pixel_values"].dtype == torch.uint8
    for key in ("input_ids", "labels", "attention_mask", "token_type_ids"):
        assert torch.equal(ready[key], plain[key]), key
    normalised = PixelNormalizer(processor.image_processor)(ready["pixel_values"])
    assert (normalised - plain["pixel_values"]).abs().max() <= LEVEL * 1.0001


@pytest.mark.parametrize("change", [{"do_pan_and_scan": True}, {"size": {"shortest_edge": 64}}])
def test_a_processor_whose_work_medtune_cannot_do_is_used_as_it_is(tiny, change):
    model, processor = tiny
    odd = copy.copy(processor)
    odd.image_processor = copy.copy(processor.image_processor)
    for key, value in change.items():
        setattr(odd.image_processor, key, value)
    assert model_ready_inputs(model, odd) == (odd, None)
