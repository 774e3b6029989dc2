"""Loss on the answer and its <end_of_turn> only, checked token by token on the tiny MedGemma-shaped model."""
from __future__ import annotations

import os

import pytest
from datasets import load_from_disk

from medtune.collator import IGNORE_INDEX, build_collator
from medtune.tiny import GEMMA3_CHAT_TEMPLATE, MM_TOKENS, tiny_checkpoint_dir


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint_dir())


@pytest.fixture(scope="module")
def rows(small_crc):
    train = load_from_disk(str(small_crc / "data"))["train"]
    # two rows whose answers differ in length, so that one of them is padded
    by_label = {r["label"]: r for r in train}
    return [by_label[0], by_label[8]]


def test_tiny_uses_gemma3s_chat_template_verbatim():
    import trl

    path = os.path.join(os.path.dirname(trl.__file__), "chat_templates", "gemma3.jinja")
    assert GEMMA3_CHAT_TEMPLATE == open(path, encoding="utf-8").read()


def test_loss_is_on_the_answer_and_end_of_turn_only(processor, rows):
    tokenizer = processor.tokenizer
    batch = build_collator(processor)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    model_turn = tokenizer("<start_of_turn>model\n", add_special_tokens=False)["input_ids"]
    for row, ids, labels in zip(rows, batch["input_ids"].tolist(), batch["labels"].tolist()):
        answer_ids = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        # where the model's turn starts: the answer follows it directly
        start = next(i + len(model_turn) for i in range(len(ids)) if ids[i:i + len(model_turn)] == model_turn)
        expected = [IGNORE_INDEX] * len(ids)
        for offset, token in enumerate([*answer_ids, end_of_turn]):
            assert ids[start + offset] == token
            expected[start + offset] = token
        assert labels == expected, tokenizer.convert_ids_to_tokens(ids)
        # and, spelled out: no image, begin/end-of-image, pad or prompt token carries loss
        for token_id, label in zip(ids, labels):
            if token_id in (tokenizer.image_token_id, tokenizer.boi_token_id, tokenizer.eoi_token_id,
                            tokenizer.pad_token_id, tokenizer.bos_token_id):
                assert label == IGNORE_INDEX
        assert ids.count(tokenizer.image_token_id) == MM_TOKENS
    assert (batch["attention_mask"] == 0).any(), "one row should be padded"


def test_collating_leaves_the_dataset_rows_intact(processor, rows):
    import copy

    before = copy.deepcopy(rows)
    build_collator(processor)(rows)
    assert all("image" in r for r in rows)
    for row, kept in zip(rows, before):  # every column as it was, the image's pixels included
        assert row.keys() == kept.keys()
        assert all(row[k] == kept[k] for k in row if k != "image")
        assert row["image"].tobytes() == kept["image"].tobytes() and row["image"].mode == kept["image"].mode


def test_truncating_into_the_image_is_refused(processor, rows):
    from medtune.errors import MedtuneError

    with pytest.raises(MedtuneError, match="cuts into the image tokens"):
        build_collator(processor, max_length=8)(rows)


def test_inspect_marks_the_loss_tokens(small_crc, tiny_cache):
    from medtune.config import load_recipe
    from medtune.inspect_batch import inspect_example
    from tests.conftest import REPO

    recipe = load_recipe(REPO / "recipes/demo/tissue_classification.yaml", [f"data.path={small_crc / 'data'}"])
    text = inspect_example(recipe)
    assert "<image_soft_token>\u00d74" in text
    assert "\u27e6A: adipose<end_of_turn>\u27e7" in text or "<end_of_turn>\u27e7" in text
    assert "tokens with loss: " in text and "image tokens: 4" in text


def test_projecting_only_labelled_positions_gives_the_same_loss_and_gradients(processor, rows):
    """medtune.trainer.project_labelled_positions_only: on a CPU, TRL's fused LM head then projects only the
    answer's positions (as it does on a GPU); the loss and the gradients are those of every position."""
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForImageTextToText

    from medtune.trainer import project_labelled_positions_only

    batch = build_collator(processor)(rows)
    batch.pop("token_type_ids", None)
    results = {}
    original = trl_utils._use_triton
    try:
        for name in ("every position", "labelled only"):
            if name == "labelled only":
                project_labelled_positions_only()
                assert trl_utils._use_triton(torch.device("cpu"))
            model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint_dir())
            trl_utils.add_fused_lm_head(model)
            loss = model(**batch, fused_lm_head=True).loss
            loss.backward()
            results[name] = (loss.item(), model.model.language_model.layers[0].mlp.up_proj.weight.grad.clone())
    finally:
        trl_utils._use_triton = original
    (full, full_grad), (compact, compact_grad) = results.values()
    assert compact == pytest.approx(full, rel=1e-5)
    assert torch.allclose(compact_grad, full_grad, rtol=1e-4, atol=1e-7)
