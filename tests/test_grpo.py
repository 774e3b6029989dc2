"""GRPO after SFT (issue 32): the task's own metric as the reward, checked on hand-written completions; a GRPO recipe
refused in one line before anything loads; and, for real on the tiny model, GRPO from a deliberately under-trained
SFT adapter raising the task's metric on the test split (a classification task and VQA), the reward rising over
training, the SFT adapter's column in the table and the card, QLoRA + GRPO, and a run resumed after interruption."""
from __future__ import annotations

import json

import pytest

from medtune.config import load_recipe
from medtune.errors import RecipeError
from medtune.tasks import get_task
from tests.conftest import REPO, prepare_stand_in, run_cli

GRPO_RECIPE = REPO / "recipes/tissue_classification/grpo.yaml"


# ----------------------------------------------------------------------------- rewards on hand-written completions
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoProcessor

    from medtune.tiny import tiny_checkpoint_dir

    return AutoProcessor.from_pretrained(tiny_checkpoint_dir()).tokenizer  # the twin the runs below train


def _rewards(reward, tokenizer, texts, prompt_text, **columns):
    """`reward` called as TRL calls it: prompts, TRL's decoded completions (special tokens skipped) and their ids."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}]] * len(texts)
    completions = [[{"role": "assistant", "content": tokenizer.decode(i, skip_special_tokens=True)}] for i in ids]
    return reward(prompts=prompts, completions=completions, completion_ids=ids,
                  **{k: [v] * len(texts) for k, v in columns.items()})


def test_classification_rewards_on_hand_written_completions(tokenizer):
    from medtune.rewards import FormatReward, TaskMetricReward

    task = get_task("tissue_classification")
    completions = {
        "right": "C: debris",
        "right, by its text": "debris",
        "wrong": "A: adipose",
        "unparsable": "a pink tissue",
        "several options": "C: debris, A: adipose",
        "several options, by text": "debris or mucus",
        "closed trace, right": "<unused94>thought\nstripes, so debris<unused95>C: debris",
        "closed trace, wrong": "<unused94>thought\nfat<unused95>A: adipose",
        "truncated trace": "<unused94>thought\nthe answer is C: debris",
        "repeats the question": "What is the most likely tissue type shown in the histopathology image? C: debris",
    }
    metric = _rewards(TaskMetricReward(task, tokenizer), tokenizer, list(completions.values()), task.prompt(), label=2)
    form = _rewards(FormatReward(task, tokenizer), tokenizer, list(completions.values()), task.prompt(), label=2)
    assert dict(zip(completions, metric)) == {
        "right": 1.0, "right, by its text": 1.0, "wrong": 0.0, "unparsable": 0.0, "several options": 0.0,
        "several options, by text": 0.0, "closed trace, right": 1.0, "closed trace, wrong": 0.0, "truncated trace": 0.0,
        "repeats the question": 0.0}
    assert dict(zip(completions, form)) == {
        "right": 1.0, "right, by its text": 1.0, "wrong": 1.0, "unparsable": 0.0, "several options": 0.0,
        "several options, by text": 0.0, "closed trace, right": 1.0, "closed trace, wrong": 1.0,
        "truncated trace": 0.0, "repeats the question": 0.0}


def test_an_option_whose_own_text_lists_is_one_option():
    from medtune.rewards import names_several_options

    task = get_task("classification", options={"mixed": "fat, fibre", "fat": "fat", "fibre": "fibre"})
    assert not names_several_options(task, "A: fat, fibre") and not names_several_options(task, "fat, fibre")
    assert names_several_options(task, "B: fat, C: fibre")


def test_the_trace_is_read_from_the_ids_not_from_trls_text(tokenizer):
    """TRL decodes with special tokens skipped: the tiny tokenizer's trace markers are special, as MedGemma 1.5's may
    be, so TRL's text of an unclosed trace ending in the right option would read as right."""
    from medtune.rewards import TaskMetricReward

    task, text = get_task("tissue_classification"), "<unused94>thought\nthe answer is C: debris"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "<unused94>" not in tokenizer.decode(ids, skip_special_tokens=True)
    reward = TaskMetricReward(task, tokenizer)
    prompts = [[{"role": "user", "content": task.prompt()}]]
    from_ids = reward(prompts=prompts, completions=[tokenizer.decode(ids, skip_special_tokens=True)],
                      completion_ids=[ids], label=[2])
    assert from_ids == [0.0]


def test_vqa_reward_is_token_f1_and_a_copied_question_earns_nothing(tokenizer):
    from medtune.rewards import TaskMetricReward, build_rewards

    task = get_task("free_text")
    question = "What organ system is shown in this image?"
    texts = ["chest", "the chest", "abdomen", "", f"{question} chest"]
    rewards = _rewards(TaskMetricReward(task, tokenizer), tokenizer, texts, question, answer="chest")
    assert rewards == pytest.approx([1.0, 1.0, 0.0, 0.0, 0.0])
    funcs, weights = build_rewards(task, tokenizer, {"metric_weight": 1.0, "format_weight": 0.2})
    assert [f.__name__ for f in funcs] == ["token_f1"] and weights == [1.0]  # medtune's VQA protocol has no format


def test_a_final_answer_protocol_rewards_the_final_line_only(tokenizer):
    """MedQA under the MedGemma report's prompt: the letter after "Final Answer:"; reasoning that weighs several
    options is no hack; the format reward needs the final answer line."""
    from medtune.rewards import FormatReward, TaskMetricReward

    task = get_task("medqa", protocol="medgemma-medqa")
    texts = ["(A) is unlikely and (B) too. Final Answer: (C)", "Final Answer: (B)", "The answer is C.",
             "Final Answer: (B) or (C)"]
    columns = {"label": 2, "options": ["a", "b", "c", "d"]}
    assert _rewards(TaskMetricReward(task, tokenizer), tokenizer, texts, "Q", **columns) == [1.0, 0.0, 1.0, 0.0]
    assert _rewards(FormatReward(task, tokenizer), tokenizer, texts, "Q", **columns) == [1.0, 1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- the recipe
@pytest.mark.parametrize("override, message", [
    ("grpo.num_generation=4", "grpo.num_generation: not a GRPO key (did you mean 'num_generations'?)"),
    ("training.num_generations=4", "training.num_generations: a GRPO key: put it in the grpo section"),
    ("training.max_length=512", "training.max_length: an SFT setting; GRPO does not take it"),
    ("grpo.num_generations=1", "grpo.num_generations: 1 is out of range: must be >= 2"),
    ("grpo.loss_type=ppo", "grpo.loss_type: 'ppo' is not one of dapo, grpo, dr_grpo"),
    ("grpo.use_vllm=true", "grpo.use_vllm: not settable here: vLLM pins an older transformers"),
    ("grpo.reward_weights=[1,1]", "grpo.reward_weights: not settable here: set grpo.metric_weight"),
    ("grpo.reward_metric=token_f1", "grpo.reward_metric: 'token_f1' is not a per-example score of tissue_"),
    ("grpo.reward_funcs=[no_such_module:reward]", "grpo.reward_funcs: no_such_module:reward: no module"),
    ("training.method=sft", "grpo.num_generations: GRPO settings in an SFT recipe"),
])
def test_grpo_keys_are_checked_like_sfts(override, message):
    with pytest.raises(RecipeError) as refused:
        load_recipe(GRPO_RECIPE, [override], check_data=False)
    assert str(refused.value).startswith(message)


def test_a_bad_grpo_key_is_refused_in_one_line_before_anything_loads(tmp_path):
    result = run_cli("medtune", "train", str(GRPO_RECIPE), "model.name_or_path=tiny", "grpo.temprature=0.7",
                     f"training.output_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == "medtune: grpo.temprature: not a GRPO key (did you mean 'temperature'?)"
    assert not any(tmp_path.iterdir())


def test_the_adapter_grpo_starts_from_must_be_an_sft_run_of_the_base_model(small_crc, tmp_path):
    data = f"data.path={small_crc / 'data'}"
    with pytest.raises(RecipeError, match="model.adapter: .* holds no adapter"):
        load_recipe(GRPO_RECIPE, ["model.name_or_path=tiny", data, f"model.adapter={tmp_path}"])
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "recipe.yaml").write_text("model: {name_or_path: google/medgemma-4b-it}\n")
    with pytest.raises(RecipeError, match="was trained on google/medgemma-4b-it, not tiny"):
        load_recipe(GRPO_RECIPE, ["model.name_or_path=tiny", data, f"model.adapter={tmp_path}"])
    with pytest.raises(RecipeError, match="training.output_dir: is model.adapter's folder"):
        load_recipe(GRPO_RECIPE, [data, f"model.adapter={tmp_path}", f"training.output_dir={tmp_path}"])


# ----------------------------------------------------------------------------- GRPO runs on the tiny model
# The cheapest settings found to lift the metric reliably (fixed seeds) on a 2-core CPU. The SFT runs stop early (18
# steps of 8, 12 of 16: about half the test split right); GRPO samples 8 completions of 2 prompts a step, at
# temperature 0.3 (the tiny model's next-token distributions are far flatter than a trained model's: at 1.0 its
# samples are noise).
GRPO_STEPS = ["training.max_steps=40", "grpo.num_generations=8", "training.per_device_train_batch_size=16",
              "training.learning_rate=1.0e-4", "grpo.temperature=0.3"]
TISSUE = {"sft": ["training.max_steps=18"], "grpo": GRPO_STEPS}
VQA = {"sft": ["training.max_steps=12", "training.per_device_train_batch_size=16", "training.learning_rate=3.0e-3"],
       "grpo": GRPO_STEPS}
# metric, the margin it must rise by: measured 0.556 -> 0.667 accuracy (2 of the 18 test images) and 0.571 -> 0.762
# token F1; the tissue margin is one image, so that a platform's sampling differences leave one image of room
RISE = {"tissue_classification": ("accuracy", 0.05), "free_text": ("token_f1", 0.1)}
TINY = ["model.name_or_path=tiny", "model.precision=fp32", "tracking.backend=none", "eval.num_workers=0",
        "training.activation_checkpointing=false"]


def _grpo_overrides(data, sft_dir, out_dir, settings):
    return [*TINY, f"data.path={data}", f"model.adapter={sft_dir}", f"training.output_dir={out_dir}",
            "quantization.load_in_4bit=false", "training.gradient_accumulation_steps=1", "training.warmup_steps=0",
            "training.logging_steps=1", "training.save_strategy=steps", "training.save_steps=1000",
            "grpo.max_completion_length=8", "eval.max_new_tokens=8",
            # an under-trained SFT model seldom ends its answer within the budget: a truncated answer is still scored
            "grpo.mask_truncated_completions=false", *settings["grpo"]]


def _sft_then_grpo(task_recipe, grpo_recipe, data, root, settings):
    """An SFT run deliberately stopped early (no baseline), then GRPO from its adapter, evaluated as every run."""
    from medtune.train import run

    run(load_recipe(task_recipe, [*TINY, f"data.path={data}", f"training.output_dir={root / 'sft'}",
                                  "quantization.load_in_4bit=false", "eval.baseline=false", "eval.finetuned=false",
                                  "training.save_strategy=no",
                                  "training.eval_strategy=no", *settings["sft"]]))
    return run(load_recipe(grpo_recipe, _grpo_overrides(data, root / "sft", root / "grpo", settings)))


@pytest.fixture(scope="session")
def vqa_data(tmp_path_factory):
    """The synthetic VQA-RAD download, prepared with medtune's protocol (the question alone, the answer alone)."""
    from data_prep.vqa_rad import synthesize

    root = tmp_path_factory.mktemp("vqa-grpo")
    synthesize(root / "raw")
    prepare_stand_in(root, "vqa_rad", root / "raw", "--protocol", "medtune")
    return root / "data"


@pytest.fixture(scope="session")
def grpo_runs(small_crc, vqa_data, tmp_path_factory):
    """task -> (run folder, printed table): GRPO from an under-trained SFT adapter, for tissue classification (on
    the CRC stand-in) and VQA (on the VQA-RAD stand-in, the free_text task)."""
    root = tmp_path_factory.mktemp("grpo-runs")
    tissue = _sft_then_grpo(REPO / "recipes/demo/tissue_classification.yaml", GRPO_RECIPE, small_crc / "data",
                            root / "tissue", TISSUE)
    vqa = _sft_then_grpo(REPO / "recipes/vqa/qlora.yaml", REPO / "recipes/vqa/grpo.yaml", vqa_data, root / "vqa", VQA)
    return {"tissue_classification": (root / "tissue/grpo", tissue), "free_text": (root / "vqa/grpo", vqa)}


def _metrics(run, name):
    return json.loads((run / "eval" / f"{name}.json").read_text())["metrics"]


@pytest.mark.parametrize("task", ["tissue_classification", "free_text"])
def test_grpo_raises_the_task_metric_over_the_sft_adapter_it_started_from(grpo_runs, task):
    run, table = grpo_runs[task]
    metric, margin = RISE[task]
    sft, grpo, base = (_metrics(run, name)[metric] for name in ("sft", "finetuned", "baseline"))
    assert grpo >= sft + margin, (sft, grpo)
    # the same evaluation as SFT's, the SFT adapter's column between out-of-box and fine-tuned
    assert table.splitlines()[0] == "| task | metric | out-of-box | SFT adapter | fine-tuned |"
    assert f"| {task} | {metric} | {base:.3f} | {sft:.3f} | {grpo:.3f} |" in table


@pytest.mark.parametrize("task", ["tissue_classification", "free_text"])
def test_the_reward_rises_over_training(grpo_runs, task):
    run, _ = grpo_runs[task]
    (state,) = run.glob("checkpoint-*/trainer_state.json")
    logged = [e for e in json.loads(state.read_text())["log_history"] if "reward" in e]
    quarter = len(logged) // 4
    first, last = (sum(e["reward"] for e in part) / quarter for part in (logged[:quarter], logged[-quarter:]))
    assert last > first + 0.05, (first, last)
    # what users watch, each step: spread, groups without signal, lengths, truncation, hacks
    assert {"reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
            "completions/several_options", "completions/repeats_question"} <= logged[-1].keys()


def test_the_card_says_grpo_its_rewards_and_settings(grpo_runs):
    run, _ = grpo_runs["tissue_classification"]
    card = (run / "README.md").read_text()
    assert "| out-of-box | SFT adapter | fine-tuned |" in card
    assert ("GRPO (reinforcement learning with TRL's GRPOTrainer) from the SFT adapter `sft` (trained on, not merged, "
            "so of its shape: rank 16, alpha 32") in card
    assert "reward per completion: 1 x `correct` + 0.2 x `format`" in card and "num_generations 8" in card
    assert json.loads((run / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert not (run / "ref").exists()  # TRL's reference copy is not saved with the result


def test_qlora_grpo_from_the_base_model_resumes_after_an_interruption(small_crc, tmp_path, monkeypatch, capsys):
    """QLoRA + GRPO with a new adapter, crashed inside step 3 (after checkpoint-2), then the same recipe with
    training.resume_from_checkpoint=auto: it resumes from checkpoint-2 and ends at step 4, as an SFT run does
    (tests/test_end_to_end.py kills one; the checkpoint an interrupted run resumes from is found the same way)."""
    from medtune import grpo
    from medtune.train import run

    recipe = load_recipe(GRPO_RECIPE, [
        *TINY, f"data.path={small_crc / 'data'}", f"training.output_dir={tmp_path}", "model.adapter=null",
        "quantization.load_in_4bit=true", "training.max_steps=4", "training.save_steps=2",
        "training.per_device_train_batch_size=4", "training.gradient_accumulation_steps=1", "grpo.num_generations=4",
        "grpo.max_completion_length=4", "training.logging_steps=1", "training.resume_from_checkpoint=auto",
        "eval.baseline=false", "eval.finetuned=false"])
    trainer_class = grpo._trainer_class

    def crashing_at_step_3():
        class Crashing(trainer_class()):
            def training_step(self, *args, **kwargs):
                if self.state.global_step == 2:
                    raise KeyboardInterrupt("interrupted")
                return super().training_step(*args, **kwargs)
        return Crashing

    monkeypatch.setattr(grpo, "_trainer_class", crashing_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(recipe)
    assert (tmp_path / "checkpoint-2/trainer_state.json").exists() and not (tmp_path / "checkpoint-3").exists()
    monkeypatch.setattr(grpo, "_trainer_class", trainer_class)
    capsys.readouterr()
    run(recipe)
    printed = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'checkpoint-2'}" in printed
    assert "GRPO from a new adapter on the base model" in printed
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and [e["step"] for e in state["log_history"] if "reward" in e] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_medtune_export_merges_a_grpo_adapter_unchanged(grpo_runs):
    from medtune.export import export

    run, _ = grpo_runs["free_text"]
    export(run, merge=True)
    assert (run / "merged" / "config.json").is_file() and "GRPO" in (run / "README.md").read_text()
