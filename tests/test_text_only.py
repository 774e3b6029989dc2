"""Text-only rows and models: MedQA's layout and task, and MedGemma 27B text's twin (a causal LM with a tokenizer
and no image processor)."""
from __future__ import annotations

import json
import sys

import pytest
from datasets import load_from_disk

from medtune.tasks import get_task
from medtune.tasks._multiple_choice import UNPARSABLE
from tests.conftest import run_cli

TASK = get_task("medqa")
# the demo's settings for a random model (recipes/demo/tissue_classification.yaml), without quantization
TINY = ["model.precision=fp32", "quantization.load_in_4bit=false", "lora.alpha=32", "training.learning_rate=3e-3",
        "training.per_device_train_batch_size=8", "training.activation_checkpointing=false",
        "training.eval_strategy=no", "training.save_strategy=no", "tracking.backend=none"]


def test_the_medqa_reader_keeps_each_questions_options_and_skips_broken_lines(small_medqa, tmp_path):
    from medtune.tasks._medgemma_prompts import A6_MEDQA

    data = load_from_disk(str(small_medqa / "data"))
    report = json.loads((small_medqa / "data/prep_report.json").read_text())
    assert {s: v["total"] for s, v in report["splits"].items()} == {"train": 48, "validation": 12, "test": 16}
    assert sorted(s["reason"].split(" ")[0] for s in report["skipped"]) == ["answer_idx", "not", "options"]
    assert report["task"] == {"name": "medqa", "protocol": "medgemma-medqa"}  # the MedGemma report's prompt
    assert "test: kept 16 4-option questions; the MedGemma technical report (Table 2) evaluated 1,273" in " ".join(
        report["notes"])
    row = data["train"][1]
    assert "image" not in data["train"].column_names and "images" not in data["train"].column_names
    assert [item["type"] for item in row["messages"][0]["content"]] == ["text"]
    assert row["question"] == "There is a moderate right pleural effusion. Which finding is present?"
    lines = [row["question"], *(f"({letter}) {text}" for letter, text in zip("ABCD", row["options"]))]
    assert row["messages"][0]["content"][0]["text"] == A6_MEDQA.format(question="\n".join(lines))
    assert row["answer"] == f"Final Answer: ({'ABCD'[row['label']]})" and row["options"][row["label"]] == (
        "pleural effusion")
    missing = run_cli(sys.executable, "-m", "data_prep", "medqa", "--src", str(small_medqa / "raw"), "--out",
                      str(tmp_path / "x"), "--variant", "5_options")
    assert missing.returncode == 2 and "has no train.jsonl" in missing.stderr


@pytest.mark.parametrize("reply, letter", [
    ("C", 2), ("(B)", 1), ("D: metformin", 3), ("The answer is A.", 0), ("answer: (E)", 4), ("a", 0),
    ("a patient with cough", UNPARSABLE), ("A or B", UNPARSABLE), ("", UNPARSABLE),
    ("The answer is B, not the answer is C", UNPARSABLE),
])
def test_medqa_replies_are_read_by_their_letter(reply, letter):
    assert TASK.parse_answer(reply) == letter


def test_a_text_row_renders_alike_through_a_processor_and_a_tokenizer(small_medqa):
    """The multimodal twin's processor and the text-only twin's tokenizer (the same vocabulary) collate a text row
    into the same tokens and labels: the loss is on the answer and <end_of_turn> either way."""
    from transformers import AutoProcessor

    from medtune.collator import build_collator
    from medtune.tiny import tiny_checkpoint_dir

    rows = list(load_from_disk(str(small_medqa / "data"))["train"].select(range(3)))
    processor = AutoProcessor.from_pretrained(tiny_checkpoint_dir())
    tokenizer = AutoProcessor.from_pretrained(tiny_checkpoint_dir("tiny-27b-text"))
    assert not hasattr(tokenizer, "image_processor")  # what a text-only repo gives
    through_processor, through_tokenizer = build_collator(processor)(rows), build_collator(tokenizer)(rows)
    assert "pixel_values" not in through_processor
    for key in ("input_ids", "attention_mask", "labels"):
        assert through_processor[key].tolist() == through_tokenizer[key].tolist()
    for row, ids, labels in zip(rows, through_tokenizer["input_ids"], through_tokenizer["labels"]):
        assert tokenizer.decode(ids[labels != -100]) == row["answer"] + "<end_of_turn>"


@pytest.fixture(scope="module")
def medqa_letters(small_medqa, tmp_path_factory):
    """The MedQA stand-in prepared with medtune's protocol: the letter first ("C: text"), which a random model
    learns in fewer steps than the report's reasoning prompt and "Final Answer: (C)"."""
    from tests.conftest import prepare_stand_in

    root = tmp_path_factory.mktemp("medqa-letters")
    prepare_stand_in(root, "medqa", small_medqa / "raw", "--protocol", "medtune")
    return root / "data"


def test_the_27b_text_twin_trains_and_evaluates_medqa_by_both_modes(medqa_letters, tmp_path):
    from peft import PeftModel

    from medtune.config import load_recipe
    from medtune.data import load_split
    from medtune.evaluation import evaluate
    from medtune.model import load_model, load_processor
    from medtune.train import main as train_main

    run = tmp_path / "run"
    assert train_main(["recipes/medqa/qlora-27b-text.yaml", "model.name_or_path=tiny-27b-text",
                       f"data.path={medqa_letters}", f"training.output_dir={run}", "training.num_train_epochs=3",
                       "eval.max_new_tokens=16", *TINY]) == 0
    generated = {name: json.loads((run / f"eval/{name}.json").read_text())["metrics"]
                 for name in ("baseline", "finetuned")}
    assert generated["finetuned"]["accuracy"] >= 0.75 > generated["baseline"]["accuracy"]
    assert "AutoModelForCausalLM" in (run / "README.md").read_text()  # the card loads a text model

    recipe = load_recipe(run / "recipe.yaml", ["eval.mode=score", "eval.num_workers=0"])
    model = PeftModel.from_pretrained(load_model(recipe, "fp32"), str(run))
    assert type(model.get_base_model()).__name__ == "Gemma3ForCausalLM"
    scored = evaluate(model, load_processor(recipe), load_split(recipe, "test"), get_task("medqa", protocol="medtune"),
                      recipe.eval, name="scored", out_dir=tmp_path, model_label="twin")
    assert scored["metrics"]["accuracy"] >= 0.75 and scored["metrics"]["unparsable"] == 0
    records = [json.loads(line) for line in (tmp_path / "scored_predictions.jsonl").read_text().splitlines()]
    assert all(r["scores"][4] == 0.0 and abs(sum(r["scores"]) - 1) < 1e-6 for r in records)  # 4 options: no E


def test_images_for_a_text_only_model_are_refused_in_one_line(small_crc, capsys):
    from medtune.cli import main as cli_main

    assert cli_main(["eval", "recipes/medqa/qlora-27b-text.yaml", "model.name_or_path=tiny-27b-text",
                     "task.name=tissue_classification", f"data.path={small_crc / 'data'}",
                     "tracking.backend=none"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "medtune: model.name_or_path: tiny-27b-text is a text-only model and the data has images")


def test_an_image_fine_tune_is_scored_on_medqa_for_the_knowledge_it_kept(demo_run, small_medqa, tmp_path):
    """`medtune eval` of the demo's tissue adapter (the same base model) on the MedQA stand-in."""
    from medtune.cli import main as cli_main

    adapter = demo_run[0] / "run-lora"
    assert cli_main(["eval", "recipes/medqa/qlora.yaml", "--adapter", str(adapter), "model.name_or_path=tiny",
                     "model.precision=fp32", "quantization.load_in_4bit=false", f"data.path={small_medqa / 'data'}",
                     f"training.output_dir={tmp_path}", "eval.mode=score", "eval.num_workers=0",
                     "tracking.backend=none"]) == 0
    scored = json.loads((tmp_path / "eval/adapter.json").read_text())
    assert scored["task"] == "medqa" and scored["n"] == 16 and 0 <= scored["metrics"]["accuracy"] <= 1
    assert str(adapter) in scored["model"]
