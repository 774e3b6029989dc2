"""Recipes: every shipped recipe validates; each kind of mistake is refused with one line naming the key."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from medtune.config import RecipeError, load_recipe, parse_override
from medtune.sft_fields import sft_config_fields
from tests.conftest import REPO, run_cli

RECIPES = sorted(p for p in (REPO / "recipes").glob("*/*.yaml") if p.parent.name != "benchmarks")  # suites apart
QLORA = REPO / "recipes" / "tissue_classification" / "qlora.yaml"


@pytest.fixture()
def data_path(small_crc):
    return f"data.path={small_crc / 'data'}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipes_validate(recipe, prepared):
    task = yaml.safe_load(recipe.read_text())["task"]["name"]
    loaded = load_recipe(recipe, [f"data.path={prepared[task]}"])
    assert loaded.training["output_dir"] and loaded.task.name == task


def test_a_test_share_other_than_the_prepared_one_is_refused(prepared):
    recipe = REPO / "recipes/pneumothorax/qlora.yaml"
    with pytest.raises(RecipeError, match="prepared with 0.2") as error:
        load_recipe(recipe, [f"data.path={prepared['pneumothorax']}", "data.test_fraction=0.3"])
    assert error.value.key == "data.test_fraction"


REPORTS = REPO / "recipes" / "report_generation" / "qlora.yaml"


def test_option_scoring_is_refused_for_report_generation(small_mimic):
    with pytest.raises(RecipeError, match="score needs a multiple-choice task") as error:
        load_recipe(REPORTS, [f"data.path={small_mimic / 'data'}", "eval.mode=score"])
    assert error.value.key == "eval.mode"


def test_a_test_share_is_refused_for_data_with_the_publishers_split(small_mimic):
    with pytest.raises(RecipeError, match="publisher's own test split") as error:
        load_recipe(REPORTS, [f"data.path={small_mimic / 'data'}", "data.test_fraction=0.2"])
    assert error.value.key == "data.test_fraction"


def test_qlora_recipe_follows_the_reference_notebook(data_path):
    r = load_recipe(QLORA, [data_path])
    t = r.training
    assert (t["learning_rate"], t["num_train_epochs"], t["warmup_steps"], t["max_grad_norm"]) == (2e-4, 1, 0.03, 0.3)
    assert t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] == 16
    assert (r.lora.r, r.lora.alpha, r.lora.dropout) == (16, 16, 0.05)
    assert r.quantization.load_in_4bit and r.quantization.quant_type == "nf4" and r.quantization.double_quant
    assert r.data.max_train_samples == 9000 and t["lr_scheduler_type"] == "linear" and t["activation_checkpointing"]


@pytest.mark.parametrize("recipe, batch", [(QLORA, 16), (REPO / "recipes/tissue_classification/lora.yaml", 16),
                                           (REPO / "recipes/pneumothorax/lora.yaml", 16), (REPORTS, 8)])
def test_recipes_train_at_the_measured_fast_settings(recipe, batch, prepared):
    """Micro-batch 16 x 1 for classification (8 x 2 for reports' longer sequences), SDPA in the language model."""
    task = yaml.safe_load(recipe.read_text())["task"]["name"]
    r = load_recipe(recipe, [f"data.path={prepared[task]}"])
    training = r.training
    assert (training["per_device_train_batch_size"], training["gradient_accumulation_steps"]) == (batch, 16 // batch)
    assert r.model.attn_implementation == r.model.vision_attn_implementation == "sdpa"


@pytest.mark.parametrize("override, key, words", [
    ("training.learning_rat=1e-4", "training.learning_rat", "did you mean 'learning_rate'"),
    ("lora.rank=8", "lora.rank", "unknown key"),
    ("modle.name_or_path=tiny", "modle", "did you mean 'model'"),
    ("training.learning_rate=fast", "training.learning_rate", "expected float"),
    ("lora.r=sixteen", "lora.r", "expected int"),
    ("quantization.load_in_4bit=maybe", "quantization.load_in_4bit", "expected bool"),
    ("lora.dropout=1.5", "lora.dropout", "out of range"),
    ("training.per_device_train_batch_size=0", "training.per_device_train_batch_size", "out of range"),
    ("model.precision=fp16", "model.precision", "not one of"),
    ("training.fp16=true", "training.fp16", "overflows in Gemma 3"),
    ("task.name=tisue_classification", "task.name", "did you mean 'tissue_classification'"),
    ("data.path=/nonexistent/crc", "data.path", "python -m data_prep crc100k"),
    ("export.push=true", "export.repo_id", "repo id"),
    ("training.hub_token=hf_abc", "training.hub_token", "HF_TOKEN"),
    ("training.gradient_checkpointing=false", "training.gradient_checkpointing",
     "use training.activation_checkpointing"),
    ("training.early_stopping_patience=0", "training.early_stopping_patience", "out of range"),
    *([("training.use_liger_kernel=true", "training.use_liger_kernel", "pip install 'medtune[liger]'")]
      if importlib.util.find_spec("liger_kernel") is None else []),
])
def test_bad_recipe_names_the_key_and_the_fix(override, key, words, data_path):
    overrides = [override] if override.startswith("data.path") else [data_path, override]
    with pytest.raises(RecipeError) as error:
        load_recipe(QLORA, overrides)
    assert error.value.key == key
    assert words in str(error.value)


def test_early_stopping_needs_validation(data_path):
    with pytest.raises(RecipeError, match="set training.eval_strategy") as error:
        load_recipe(QLORA, [data_path, "training.eval_strategy=no", "training.early_stopping_patience=2"])
    assert error.value.key == "training.early_stopping_patience"


def test_bad_recipe_on_the_command_line_is_one_line_exit_2_and_loads_nothing_heavy(data_path):
    result = run_cli(sys.executable, "medtune/train.py", str(QLORA), data_path, "training.learning_rat=1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "medtune: training.learning_rat: not an SFTConfig field (did you mean 'learning_rate'?)"]
    # "before anything heavy loads": validation imports neither torch nor transformers nor TRL
    probe = run_cli(sys.executable, "-c", "import sys\nfrom medtune.config import load_recipe\n"
                    f"load_recipe({str(QLORA)!r}, [{data_path!r}])\n"
                    "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


def test_missing_recipe_file_and_malformed_yaml(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task:\n  name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(bad)


def test_sft_fields_read_from_source_match_the_real_sftconfig():
    from trl import SFTConfig

    real = {f.name for f in dataclasses.fields(SFTConfig)}
    assert set(sft_config_fields()) == real


def test_override_values_are_typed_as_yaml():
    assert parse_override("training.learning_rate=2e-4") == (["training", "learning_rate"], 2e-4)
    assert parse_override("quantization.load_in_4bit=false") == (["quantization", "load_in_4bit"], False)
    assert parse_override("lora.target_modules=[q_proj, v_proj]")[1] == ["q_proj", "v_proj"]
    assert parse_override("export.repo_id=") == (["export", "repo_id"], None)
    # YAML 1.2 scalars: `no` is the strategy "no", not False (SFTConfig refused False with a traceback)
    assert parse_override("training.eval_strategy=no") == (["training", "eval_strategy"], "no")
    assert parse_override("training.save_strategy=off")[1] == "off"
    for bad in ("learning_rate=1", "training.=1", "a.b.c=1", "no-equals"):
        with pytest.raises(RecipeError):
            parse_override(bad)


@given(section=st.from_regex(r"[a-z_]{1,10}", fullmatch=True), key=st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
       value=st.one_of(st.integers(), st.booleans(), st.from_regex(r"[a-z][a-z0-9_/-]{0,15}", fullmatch=True)))
def test_override_round_trips_any_simple_value(section, key, value):
    text = f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}"
    parsed_key, parsed_value = parse_override(text)
    assert parsed_key == [section, key]
    if isinstance(value, (bool, int)):
        assert parsed_value == value
    elif value not in ("true", "false", "null") and not value.isdigit():  # yes/no/on/off stay strings
        assert str(parsed_value) == value or parsed_value == value


def test_token_like_values_are_masked_in_everything_a_run_saves(data_path, tmp_path, monkeypatch):
    from medtune.model_card import write_model_card
    from medtune.run_info import write_run_info

    token = "hf_plantedInARecipeValue0123456789"
    monkeypatch.setattr(sys, "argv", ["medtune/train.py", str(QLORA), f"tracking.run_name={token}"])
    recipe = load_recipe(QLORA, [data_path, f"tracking.run_name=run-{token}",
                                 f"training.output_dir={tmp_path}", "training.hub_model_id=org/x",
                                 "training.eos_token=<end_of_turn>"])
    write_run_info(recipe, tmp_path)
    write_model_card(recipe, tmp_path)
    written = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(written) == {"recipe.yaml", "run_info.json", "README.md"}
    assert not [name for name, text in written.items() if token in text]
    assert "run-***" in written["recipe.yaml"] and "org/x" in written["recipe.yaml"]  # the rest intact
    assert load_recipe(tmp_path / "recipe.yaml").training["eos_token"] == "<end_of_turn>"  # not a secret
