"""The MedGemma report's protocols, hand-checked: its prompts, answers read after "Final Answer:", the VQA and
multiple-choice metrics on answers in every form the protocol allows, the stop after the final answer, and the
paired bootstrap on cases whose answer is known."""
from __future__ import annotations

import pytest

from medtune.bootstrap import paired_difference
from medtune.tasks import get_task
from medtune.tasks._medgemma_prompts import ends_its_final_answer, final_answer
from medtune.tasks._multiple_choice import UNPARSABLE


@pytest.mark.parametrize("reply, stated", [
    ("The lungs look clear.\nFinal Answer: No", "No"),
    ("**Final Answer:** (C)", "(C)"),
    ("final answer: left lung.\nExplanation: ...", "left lung."),
    ("Final Answer: A\n... on reflection, Final Answer: B", "B"),  # the last statement counts
    ("Final Answer:\n\nyes", "yes"),
    ("It is C.", None),
])
def test_the_final_answer_is_what_follows_the_last_marker(reply, stated):
    assert final_answer(reply) == stated


@pytest.mark.parametrize("reply, done", [
    ("reasoning... Final Answer: (C)\n", True), ("Final Answer: (C)", False),  # its line may go on
    ("Final Answer:\n", False), ("no answer yet\n", False),
])
def test_generation_stops_once_the_final_answer_line_ends(reply, done):
    assert ends_its_final_answer(reply) is done


def test_the_report_prompts_word_for_word():
    slake = get_task("free_text", protocol="medgemma-slake")
    assert slake.prompt("Where is the liver?") == (
        "Where is the liver?You may write out your argument before stating your final very short, definitive, and "
        "concise answer (if possible, a single word or the letter corresponding to your answer choice) X in the "
        "format \"Final Answer: X\": ")
    assert slake.answer("Left") == "Final Answer: Left"
    vqa_rad = get_task("free_text", protocol="medgemma-vqa-rad")
    assert vqa_rad.prompt("is there a mass?").endswith("(if possible, a single word) to the following question: "
                                                      "is there a mass?")
    assert vqa_rad.answer("yes") == "yes"  # its prompt asks for no "Final Answer:"
    medqa = get_task("medqa", protocol="medgemma-medqa")
    prompt = medqa.row_prompt("A 40-year-old man ...?", ["Aspirin", "Metformin"])
    assert prompt.startswith("Instructions: The following are multiple choice questions about medical knowledge. "
                             "Solve them in a step-by-step fashion, starting by summarizing the available information. "
                             "Output a single option from the four options as the final answer. Question: A 40-year")
    assert "\n(A) Aspirin\n(B) Metformin Response (think step by step and then end with \"Final Answer:\"" in prompt
    assert medqa.row_answer(["Aspirin", "Metformin"], 1) == "Final Answer: (B)"
    assert "Question: Q?\n(A) x Response" not in get_task("medqa", protocol="medgemma-medmcqa").row_prompt("Q?", ["x"])
    findings = get_task("cxr_findings", None, {"edema": "edema", "fracture": "Are there any fractures in the image?"})
    assert findings.prompt(0).startswith("Is there edema in this image? You may write out your argument")
    assert findings.prompt(1).startswith("Are there any fractures in the image? You may")
    assert findings.answer(1) == "Final Answer: yes"


def test_vqa_token_f1_and_closed_accuracy_by_hand():
    task = get_task("free_text", protocol="medgemma-slake")
    references = ["left lung", "yes", "no", "CT"]
    replies = ["The opacity is on the left.\nFinal Answer: the left lung", "Final Answer: Yes, there is.",
               "Final Answer: yes", "It is an MRI scan."]
    metrics = task.compute_metrics(references, [task.parse_answer(r) for r in replies])
    # SQuAD F1 (articles and punctuation out): "left lung" vs "left lung" 1; "yes" vs "yes there is" 2*1/3 / (1+1/3)
    # = 0.5; "no" vs "yes" 0; "ct" vs "it is an mri scan" 0 (no reply to read "Final Answer:" from: the whole reply)
    assert metrics["token_f1"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert metrics["closed_accuracy"] == pytest.approx(0.5)  # "Yes, there is." right, "yes" for "no" wrong
    assert metrics["token_f1_open"] == pytest.approx(0.5) and (metrics["n_open"], metrics["n_closed"]) == (2, 2)


@pytest.mark.parametrize("reply, letter", [
    ("Let us think... Final Answer: (C)", 2), ("**Final Answer:** B", 1), ("Final Answer:(D)", 3),
    ("final answer: (a) aspirin", UNPARSABLE),  # a lower-case letter after the marker is not a letter answer
    ("Final Answer: E", UNPARSABLE),  # a letter the question does not offer (A to D)
    ("Final Answer: none of these", UNPARSABLE), ("C", 2), ("(B) Metformin", 1), ("The answer is D.", 3),
])
def test_multiple_choice_answers_in_every_form_the_protocol_allows(reply, letter):
    task = get_task("medqa", protocol="medgemma-medqa")
    four = {"options": ["w", "x", "y", "z"]}
    parsed = task.parse_answer(reply)
    assert (parsed if parsed < task.option_count(four) else UNPARSABLE) == letter


def test_multiple_choice_accuracy_by_hand():
    task = get_task("medqa", protocol="medgemma-medqa")
    replies = ["Final Answer: (A)", "Final Answer: (B)", "no idea", "Final Answer: (C)"]
    metrics = task.compute_metrics([0, 2, 1, 2], [task.parse_answer(r) for r in replies])
    assert metrics["accuracy"] == pytest.approx(0.5) and metrics["unparsable"] == 1


def _records(correct: list[bool]) -> list[dict]:
    return [{"id": str(i), "correct": c, "reference": 0, "parsed": 0 if c else 1} for i, c in enumerate(correct)]


def test_the_paired_bootstrap_on_cases_whose_answer_is_known():
    task = get_task("medqa")
    right, wrong = _records([True] * 40), _records([False] * 40)
    better = paired_difference(task, "accuracy", wrong, right)
    assert (better["difference"], better["low"], better["high"], better["regression"]) == (1.0, 1.0, 1.0, False)
    worse = paired_difference(task, "accuracy", right, wrong)
    assert worse["difference"] == -1.0 and worse["regression"]
    same = paired_difference(task, "accuracy", right, right)
    assert (same["low"], same["high"], same["regression"]) == (0.0, 0.0, False)
    # 10 of 100 examples lost, none gained: a drop of 0.1 whose interval (the resampled share of the lost ones)
    # lies below zero: a regression, about 0.1 +- 1.96 * sqrt(0.1 * 0.9 / 100) = 0.06 wide
    base = _records([True] * 100)
    tuned = _records([False] * 10 + [True] * 90)
    drop = paired_difference(task, "accuracy", base, tuned, resamples=2000)
    assert drop["difference"] == pytest.approx(-0.1) and drop["regression"]
    assert -0.17 < drop["low"] < -0.13 and -0.06 < drop["high"] < -0.03
    # only the examples both models answered are paired
    assert paired_difference(task, "accuracy", base[:30], tuned)["n"] == 30


def test_a_metric_that_is_no_mean_is_recomputed_on_each_draw():
    task = get_task("cxr_findings", None, {"edema": "edema", "effusion": "pleural effusion"})
    references = [[1, 0], [0, 1], [1, -1], [0, 0]] * 5
    base = [{"id": str(i), "reference": r, "parsed": [0, 0]} for i, r in enumerate(references)]
    tuned = [{"id": str(i), "reference": r, "parsed": [max(v, 0) for v in r]} for i, r in enumerate(references)]
    difference = paired_difference(task, "macro_f1", base, tuned, resamples=200)
    assert difference["difference"] == pytest.approx(1.0) and difference["low"] == pytest.approx(1.0)


def test_a_protocol_without_a_context_slot_still_shows_pubmedqas_abstract():
    from medtune.tasks import get_task

    for protocol in ("medgemma-1.5", "medtune"):
        prompt = get_task("medqa", protocol=protocol).row_prompt("Does X cause Y?", ["yes", "no", "maybe"], "Abstract.")
        assert prompt.startswith("Context: Abstract.\nQuestion: Does X cause Y?\n"), protocol
    pubmedqa = get_task("medqa", protocol="medgemma-pubmedqa").row_prompt("Does X cause Y?", ["yes", "no"], "Abstract.")
    assert pubmedqa.count("Abstract.") == 1 and "Context: Abstract. Question: Does X cause Y?" in pubmedqa


def test_a_final_answer_inside_an_open_thinking_trace_does_not_stop_the_generation():
    import torch
    from transformers import AutoTokenizer

    from medtune.inference import FinalAnswerStop
    from medtune.thinking import TRACE_CLOSE, TRACE_OPEN
    from medtune.tiny import tiny_checkpoint_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint_dir())
    stop = FinalAnswerStop(tokenizer, prompt_length=2)
    opened, closed = (tokenizer.convert_tokens_to_ids(t) for t in (TRACE_OPEN, TRACE_CLOSE))
    answer = tokenizer("so Final Answer: (C)\n", add_special_tokens=False)["input_ids"]
    rows = torch.tensor([[1, 1, 1, 1, *answer], [1, 1, opened, 1, *answer], [1, 1, opened, closed, *answer]])
    assert stop(rows, None).tolist() == [True, False, True]
