"""The MedGemma family beyond 4B IT: MedGemma 1.5's thinking traces, and MedGemma 27B's layout (tiny twins)."""
from __future__ import annotations

import json
import shutil

import pytest
from datasets import load_from_disk

from medtune.tasks import get_task
from medtune.thinking import CLOSED, NO_TRACE, TRACE_CLOSE, TRACE_OPEN, UNCLOSED, decode_generation, split_trace

TASK = get_task("tissue_classification")
# the demo's settings for a random model (recipes/demo/tissue_classification.yaml)
TINY = ["lora.alpha=32", "training.learning_rate=3e-3", "training.per_device_train_batch_size=8",
        "training.activation_checkpointing=false", "training.eval_strategy=no", "training.save_strategy=no",
        "tracking.backend=none"]


# ----------------------------------------------------------------------------- MedGemma 1.5: thinking traces
def test_traces_are_split_from_the_answer_and_their_markers_survive_decoding():
    from transformers import AutoProcessor

    from medtune.tiny import tiny_checkpoint_dir

    tokenizer = AutoProcessor.from_pretrained(tiny_checkpoint_dir()).tokenizer
    text = f"{TRACE_OPEN}thought\nstripes, pale{TRACE_CLOSE}A: adipose"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    assert TRACE_OPEN not in tokenizer.decode(ids, skip_special_tokens=True)  # the trap: special tokens vanish
    assert decode_generation(tokenizer, ids) == text
    assert split_trace(text) == ("A: adipose", CLOSED)
    assert split_trace(f"\n{TRACE_OPEN}thought\nstripes, pale, and") == ("", UNCLOSED)
    assert split_trace("A: adipose") == ("A: adipose", NO_TRACE)
    assert split_trace(f"A: adipose {TRACE_OPEN}") == (f"A: adipose {TRACE_OPEN}", NO_TRACE)  # not a leading trace


@pytest.fixture(scope="module")
def thinking_data(small_crc, tmp_path_factory):
    """The CRC stand-in with answers as a MedGemma 1.5 model gives them: a trace, then the answer. Only to make
    a twin that thinks: medtune's own training data never holds a trace."""
    out = tmp_path_factory.mktemp("thinking") / "data"

    def with_trace(row):
        row["messages"][1]["content"][0]["text"] = f"{TRACE_OPEN}thought\n{TRACE_CLOSE}{row['answer']}"
        return {"messages": row["messages"]}

    load_from_disk(str(small_crc / "data")).map(with_trace).save_to_disk(str(out))
    shutil.copy(small_crc / "data" / "prep_report.json", out)
    return out


def test_a_model_that_thinks_is_evaluated_on_what_follows_its_trace(thinking_data, tmp_path):
    """Traces that close are parsed after their end; with a budget that ends inside the trace, as when 1.5 never
    closes it, every answer is unparsable and counted so; option scoring never meets a trace."""
    from peft import PeftModel

    from medtune.config import load_recipe
    from medtune.data import load_split
    from medtune.evaluation import evaluate
    from medtune.model import load_model, load_processor
    from medtune.train import main as train_main

    run = tmp_path / "run"
    assert train_main(["recipes/demo/tissue_classification.yaml", f"data.path={thinking_data}",
                       f"training.output_dir={run}", "eval.baseline=false", "eval.max_new_tokens=24",
                       "tracking.backend=none"]) == 0
    metrics = json.loads((run / "eval/finetuned.json").read_text())["metrics"]
    records = [json.loads(line) for line in (run / "eval/finetuned_predictions.jsonl").read_text().splitlines()]
    assert metrics["thinking_traces"] == len(records) and metrics["unclosed_traces"] == 0  # the twin thinks
    assert all(r["generated"].startswith(f"{TRACE_OPEN}thought\n{TRACE_CLOSE}") for r in records)  # raw text kept
    assert all(r["parsed"] == TASK.parse_answer(r["generated"].split(TRACE_CLOSE, 1)[1]) for r in records)
    assert "| tissue_classification | thinking_traces | — |" in (run / "eval/comparison.md").read_text()

    recipe = load_recipe(run / "recipe.yaml", ["eval.max_new_tokens=4", "eval.num_workers=0"])
    model = PeftModel.from_pretrained(load_model(recipe, "fp32"), str(run))
    processor, test = load_processor(recipe), load_split(recipe, "test")
    cut = evaluate(model, processor, test, TASK, recipe.eval, name="cut", out_dir=tmp_path, model_label="twin")
    assert cut["metrics"]["unclosed_traces"] == cut["metrics"]["unparsable"] == len(test)  # never guessed
    recipe.eval.mode = "score"
    scored = evaluate(model, processor, test, TASK, recipe.eval, name="scored", out_dir=tmp_path, model_label="twin")
    assert "thinking_traces" not in scored["metrics"] and scored["metrics"]["unparsable"] == 0


# ----------------------------------------------------------------------------- the pt model's plain form
def test_the_pt_form_has_no_turns_and_trains_on_the_report_only(small_mimic, tmp_path):
    from medtune.collator import build_collator
    from medtune.config import load_recipe
    from medtune.inference import PromptInputs
    from medtune.model import load_processor
    from medtune.trainer import build_trainer, sft_config

    recipe = load_recipe("recipes/report_generation/qlora-pt.yaml",
                         ["model.name_or_path=tiny", f"data.path={small_mimic / 'data'}", "training.eval_strategy=no",
                          "training.save_strategy=no", "tracking.backend=none", f"training.output_dir={tmp_path}"])
    processor = load_processor(recipe)
    rows = list(load_from_disk(str(small_mimic / "data"))["train"].select(range(2)))
    tokenizer = processor.tokenizer
    batch = build_collator(processor)(rows)
    for row, ids, labels in zip(rows, batch["input_ids"], batch["labels"]):
        text = tokenizer.decode(ids[ids != tokenizer.pad_token_id])
        assert "<start_of_turn>" not in text and text.startswith("<bos>\n\n<start_of_image>")
        assert tokenizer.decode(ids[labels != -100]) == row["answer"] + "<eos>"  # the report, then where to stop
    prompt = PromptInputs(processor, None, None)(rows[:1])
    assert tokenizer.decode(prompt["input_ids"][0]).endswith(
        rows[0]["messages"][0]["content"][1]["text"].strip() + "\n")
    trainer, _ = build_trainer(recipe, sft_config(recipe, "fp32", on_cpu=True), "fp32")  # TRL's checks pass
    assert not trainer.args.assistant_only_loss and trainer.data_collator.completion_only_loss


# ----------------------------------------------------------------------------- MedGemma 27B's layout
@pytest.mark.parametrize("recipe, overrides", [
    ("recipes/tissue_classification/qlora-27b.yaml", ["eval.mode=score"]),  # QLoRA, option scoring
    ("recipes/report_generation/lora-27b.yaml", ["eval.max_new_tokens=8"]),  # LoRA, generation
])
def test_the_27b_layout_trains_and_evaluates(recipe, overrides, prepared, tmp_path):
    from transformers import AutoConfig

    from medtune.tiny import tiny_checkpoint_dir
    from medtune.train import main as train_main

    task = "report_generation" if "report" in recipe else "tissue_classification"
    assert train_main([recipe, "model.name_or_path=tiny-27b", f"data.path={prepared[task]}",
                       f"training.output_dir={tmp_path}", "training.max_steps=1", "data.max_test_samples=4",
                       "training.per_device_train_batch_size=2", "eval.baseline=false", "eval.num_workers=0",
                       *TINY[4:], *overrides]) == 0
    assert json.loads((tmp_path / "eval/finetuned.json").read_text())["n"] == 4
    assert (tmp_path / "adapter_model.safetensors").stat().st_size > 0
    text = AutoConfig.from_pretrained(tiny_checkpoint_dir("tiny-27b")).text_config
    assert text.num_attention_heads * text.head_dim != text.hidden_size  # 27B's layout, not 4B's
    assert text.layer_types.count("full_attention") == 1 and len(text.layer_types) == 6
