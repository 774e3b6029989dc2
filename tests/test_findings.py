"""Chest X-ray findings: several yes/no questions about one image. Trained packed in one sequence that encodes the
image once (each answer sees what it would see asked alone), evaluated one question per finding with the image
encoded once per batch, scored by macro F1 over the findings (pairs not scored left out), per-finding AUROC."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medtune.tasks import get_task
from medtune.tasks._multiple_choice import UNPARSABLE

FINDINGS = {"atelectasis": "atelectasis", "cardiomegaly": "cardiomegaly", "edema": "edema",
            "pleural_effusion": "pleural effusion", "fracture": "Are there any fractures in the image?"}
TASK = get_task("cxr_findings", None, FINDINGS)


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    return [{"messages": TASK.messages(labels), "image": Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8))}
            for labels in ([1, 0, 1, -1, 0], [0, 0, 1, 1, 1], [1, 1, -1, -1, -1])]


def _tiny(attention: str):
    from transformers import AutoModelForImageTextToText

    from medtune.model import encode_each_distinct_image_once
    from medtune.shared_prefix import install_branch_masks
    from medtune.tiny import tiny_checkpoint_dir

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint_dir(), attn_implementation=attention).eval()
    install_branch_masks(model.model)
    encode_each_distinct_image_once(model)
    return model


def _answer_logits(batch, logits):
    """The logits that predict each answer token, row after row."""
    return torch.cat([logits[b, (batch["labels"][b, 1:] != -100).nonzero().flatten()]
                      for b in range(len(batch["labels"]))])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_questions_see_exactly_what_each_would_see_asked_alone(rows, attention):
    from transformers import AutoProcessor

    from medtune.collator import build_collator
    from medtune.prompts import single_questions
    from medtune.tiny import tiny_checkpoint_dir

    processor = AutoProcessor.from_pretrained(tiny_checkpoint_dir())
    packed = build_collator(processor, independent_questions=True)(rows)
    alone = build_collator(processor)([{"messages": q, "image": r["image"]} for r in rows
                                       for q in single_questions(r["messages"])])
    assert packed["input_ids"].shape[0] == 3 and alone["input_ids"].shape[0] == 4 + 5 + 2  # the scored findings
    assert packed["pixel_values"].shape[0] == 3  # one image a row
    assert packed["attention_mask"].sum() < alone["attention_mask"].sum()  # the image's tokens once a row
    assert (packed["labels"] != -100).sum() == (alone["labels"] != -100).sum()  # every answer, once
    model = _tiny(attention)
    with torch.no_grad():
        together, apart = _answer_logits(packed, model(**packed).logits), _answer_logits(alone, model(**alone).logits)
    assert together.shape == apart.shape
    assert torch.allclose(together, apart, atol=1e-4)  # the tiny model's sliding window (32) is within a question
    # the branches really are separate: letting them see each other changes the later answers
    shared = {**packed, "branch_ids": torch.full_like(packed["branch_ids"], -1)}
    with torch.no_grad():
        assert not torch.allclose(_answer_logits(packed, model(**shared).logits), apart, atol=1e-3)


def test_the_vision_tower_encodes_each_repeated_image_once():
    model = _tiny("sdpa")
    encoded = []
    model.model.vision_tower.embeddings.register_forward_pre_hook(lambda module, args, kwargs: encoded.append(
        (args[0] if args else kwargs["pixel_values"]).shape[0]), with_kwargs=True)
    pixels = torch.randn(3, 3, 64, 64)
    batch = pixels[[0, 0, 0, 1, 2, 2]]  # the questions of an image sit together
    with torch.no_grad():
        features = model.model.get_image_features(batch, return_dict=True).pooler_output
        one_by_one = torch.cat([model.model.get_image_features(p[None], return_dict=True).pooler_output
                                for p in batch])
    assert encoded[0] == 3 and torch.allclose(features, one_by_one, atol=1e-6)


def test_macro_f1_over_findings_with_pairs_not_scored_by_hand():
    task = get_task("cxr_findings", None, {"a": "a", "b": "b"})
    references = [[1, 0], [0, 1], [1, -1], [0, 0], [1, 1]]
    predictions = [[1, 0], [1, 1], [UNPARSABLE, 0], [0, 1], [0, 1]]
    scores = [[[0.2, 0.8], [0.9, 0.1]], [[0.4, 0.6], [0.3, 0.7]], [[0.6, 0.4], [0.5, 0.5]], [[0.9, 0.1], [0.2, 0.8]],
              [[0.7, 0.3], [0.1, 0.9]]]
    metrics = task.compute_metrics(references, predictions, scores)
    # a: references 1 0 1 0 1, predictions 1 1 ? 0 0: TP 1, FP 1, FN 2 (the unparsable one is a miss): F1 2/(2+1+2)
    # b: references 0 1 - 0 1 (the third not scored), predictions 0 1 . 1 1: TP 2, FP 1, FN 0: F1 4/5
    per = metrics["per_finding"]
    assert per["a"]["f1"] == pytest.approx(0.4) and per["b"]["f1"] == pytest.approx(0.8)
    assert metrics["macro_f1"] == pytest.approx(0.6)
    assert (per["a"]["sensitivity"], per["a"]["specificity"]) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert (per["b"]["sensitivity"], per["b"]["specificity"]) == (pytest.approx(1.0), pytest.approx(1 / 2))
    assert per["b"]["not_scored"] == 1 and metrics["pairs"] == 9 and metrics["unparsable"] == 1
    # AUROC of a from P(yes): positives 0.8, 0.4, 0.3 against negatives 0.6, 0.1: 4 of 6 pairs ranked right
    assert metrics["auroc_a"] == pytest.approx(4 / 6)
    # b: positives 0.7, 0.9 against negatives 0.1, 0.8: 3 of 4
    assert metrics["auroc_b"] == pytest.approx(3 / 4)
    assert metrics["macro_auroc"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert task.compute_metrics(references, predictions)["macro_auroc"] is None  # generation gives no scores


@pytest.mark.parametrize("reply, read", [
    ("The costophrenic angles are blunted.\nFinal Answer: Yes", 1), ("Final Answer: no.", 0), ("No.", 0),
    ("Final Answer: possibly", UNPARSABLE), ("", UNPARSABLE),
])
def test_a_findings_reply_is_read_as_yes_or_no(reply, read):
    assert TASK.parse_answer(reply) == read


def test_a_row_trains_only_its_scored_findings_and_is_asked_all_of_them():
    labels = [1, -1, 0, -1, 1]
    messages = TASK.messages(labels)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert [m["content"][-1]["text"] for m in messages[1::2]] == ["Final Answer: yes", "Final Answer: no",
                                                                    "Final Answer: yes"]
    assert sum(item["type"] == "image" for m in messages for item in m["content"]) == 1  # before the first question
    asked = TASK.conversations({"finding_labels": labels, "image": object()})
    assert len(asked) == 5 and all(c[0]["content"][0]["type"] == "image" for c in asked)
    assert TASK.summary(labels).startswith("atelectasis: yes; cardiomegaly: not scored")
