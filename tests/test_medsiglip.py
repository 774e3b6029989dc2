"""MedSigLIP beside MedGemma: zero-shot, linear-probe and LoRA recipes on the tiny SigLIP twin, their evaluation
files, the embedding cache, the cards, `medtune compare`, and the refusal of the other family's keys."""
from __future__ import annotations

import json

import pytest

from medtune.config import RecipeError, load_recipe
from medtune.train import main as train_main

ZERO_SHOT = "recipes/tissue_classification/medsiglip-zeroshot.yaml"
PROBE = "recipes/tissue_classification/medsiglip-probe.yaml"
LORA = "recipes/tissue_classification/medsiglip-lora.yaml"
# a random tiny tower learns in a few epochs at a high rate; no checkpoints or loader workers on a CPU
QUICK_LORA = ["training.learning_rate=3e-3", "training.per_device_train_batch_size=8", "training.eval_strategy=no",
              "training.save_strategy=no", "training.activation_checkpointing=false",
              "training.dataloader_num_workers=0"]


def _run(recipe: str, data, out, *overrides: str):
    """`tiny` as for every recipe: on a MedSigLIP recipe it is the tiny-siglip twin (the compare table names it)."""
    code = train_main([recipe, "model.name_or_path=tiny", f"data.path={data}", f"training.output_dir={out}",
                       "tracking.backend=none", "encoder.num_workers=0", *overrides])
    assert code == 0
    return out


def test_zero_shot_and_probe_write_the_usual_files_and_the_probe_learns(small_crc, tmp_path):
    data = small_crc / "data"
    zero_shot = _run(ZERO_SHOT, data, tmp_path / "zeroshot")
    assert not (zero_shot / "eval/finetuned.json").exists()
    probe = _run(PROBE, data, tmp_path / "probe")
    for run, names in ((zero_shot, ["baseline"]), (probe, ["baseline", "finetuned"])):
        assert (run / "eval/comparison.md").is_file() and (run / "recipe.yaml").is_file()
        for name in names:
            result = json.loads((run / f"eval/{name}.json").read_text())
            assert result["figures"] == [f"{name}_confusion_matrix.png"]
            assert (run / "eval" / result["figures"][0]).is_file()
            assert result["metrics"]["unparsable"] == 0 and result["metrics"]["auroc"] is not None
            records = (run / f"eval/{name}_predictions.jsonl").read_text().splitlines()
            assert len(records) == result["n"] and all(len(json.loads(r)["scores"]) == 9 for r in records)
    zero, learned = (json.loads((probe / f"eval/{n}.json").read_text())["metrics"] for n in ("baseline", "finetuned"))
    assert learned["weighted_f1"] >= 0.8 and zero["weighted_f1"] < 0.5
    from safetensors import safe_open

    with safe_open(str(probe / "probe.safetensors"), "np") as f:
        assert f.get_tensor("coef").shape[0] == 9 and json.loads(f.metadata()["classes"])[0] == "ADI"


def test_embeddings_are_computed_once_and_reused(small_crc, tmp_path):
    from medtune.embeddings import CACHE_FOLDER

    data = small_crc / "data"
    first = _run(PROBE, data, tmp_path / "first", "eval.baseline=false")
    cache = sorted((data / CACHE_FOLDER).rglob("*.npz"))
    assert [p.name for p in cache] == ["test.npz", "train.npz", "validation.npz"]
    written = {p: p.stat().st_mtime_ns for p in cache}
    second = _run(PROBE, data, tmp_path / "second", "eval.baseline=false", "encoder.probe_c=[0.5, 5.0]",
                  "data.max_train_samples=20")
    assert {p: p.stat().st_mtime_ns for p in cache} == written  # read, not written again
    for run, cached in ((first, None), (second, True)):
        decoding = json.loads((run / "eval/finetuned.json").read_text())["decoding"]
        assert decoding["method"] == "probe" and (cached is None or decoding["embeddings_cached"] is cached)
    assert json.loads((second / "eval/finetuned.json").read_text())["decoding"]["C"] in (0.5, 5.0)


def test_the_probe_runs_on_pneumothorax(small_siim, tmp_path):
    run = _run("recipes/pneumothorax/medsiglip-probe.yaml", small_siim / "data", tmp_path / "siim")
    metrics = json.loads((run / "eval/finetuned.json").read_text())["metrics"]
    assert {"f1", "accuracy", "auroc"} <= metrics.keys() and metrics["unparsable"] == 0


def test_compare_puts_medgemma_and_medsiglip_runs_in_one_table(demo_run, tmp_path):
    from medtune.cli import main as cli_main
    from medtune.compare import compare

    workdir = demo_run[0]
    same_test = ["data.max_test_samples=108"]  # the demo recipe's cap, with the same seed: the same test images
    zero_shot = _run(ZERO_SHOT, workdir / "data", tmp_path / "zeroshot", *same_test)
    probe = _run(PROBE, workdir / "data", tmp_path / "probe", *same_test)
    lora = _run(LORA, workdir / "data", tmp_path / "lora", *same_test, "training.max_steps=2", *QUICK_LORA)
    table = compare([workdir / "run-lora", zero_shot, probe, lora])
    lines = table.splitlines()
    assert lines[0] == "tissue_classification, test split, n=108"
    assert lines[2].startswith("| run | model | method | weighted_f1 |") and lines[2].endswith("| trainable params |")
    methods = [line.split("|")[3].strip() for line in lines[4:]]
    assert methods == ["out-of-box", "LoRA", "zero-shot", "zero-shot", "linear probe", "zero-shot", "LoRA"]
    assert lines[-3].split("|")[-2].strip().replace(",", "").isdigit()  # the probe's parameters, counted
    assert lines[-1].split("|")[2].strip() == "tiny-siglip" and lines[-1].split("|")[-2].strip() != "—"

    other = _run(ZERO_SHOT, workdir / "data", tmp_path / "fewer", "data.max_test_samples=27")
    with pytest.raises(Exception, match="compare runs on the same test examples"):
        compare([workdir / "run-lora", other])
    assert cli_main(["compare", str(workdir / "run-lora"), str(other)]) == 2


@pytest.mark.parametrize("recipe, overrides, key", [
    (PROBE, ["quantization.load_in_4bit=true"], "quantization.load_in_4bit"),
    (PROBE, ["eval.mode=score"], "eval.mode"),
    (PROBE, ["model.name_or_path=tiny-27b"], "model.name_or_path"),  # a MedGemma twin
    ("recipes/tissue_classification/qlora.yaml", ["model.name_or_path=tiny-siglip"], "encoder.method"),
    ("recipes/tissue_classification/qlora.yaml", ["encoder.templates=['{} tissue']"], "encoder.templates"),
    ("recipes/report_generation/qlora.yaml", ["encoder.method=probe", "model.name_or_path=tiny-siglip"], "task.name"),
])
def test_one_familys_keys_in_the_others_recipe_are_refused(recipe, overrides, key, prepared):
    task = "report_generation" if "report" in recipe else "tissue_classification"
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe, ["model.name_or_path=tiny-siglip" if "medsiglip" in recipe else "model.name_or_path=tiny",
                             f"data.path={prepared[task]}", *overrides])
    assert error.value.key == key and "\n" not in str(error.value)


def _card_snippet(run, method: str):
    """The usage snippet of the run's card, pointed at the tiny twin and this run's folder."""
    from medtune.medsiglip import snippet as encoder_snippet
    from medtune.tiny import TINY_ENCODER, tiny_checkpoint_dir

    code = encoder_snippet(method, str(tiny_checkpoint_dir(TINY_ENCODER)), None, 9)
    assert code.split("\n")[-1] in (run / "README.md").read_text()  # the card carries it
    return code.replace("path/to/this/folder", str(run))


def test_the_lora_classifier_learns_and_its_card_loads_it(small_crc, tmp_path):
    import numpy as np
    from datasets import load_from_disk

    run = _run(LORA, small_crc / "data", tmp_path / "lora", "training.num_train_epochs=12", *QUICK_LORA)
    zero, learned = (json.loads((run / f"eval/{n}.json").read_text())["metrics"] for n in ("baseline", "finetuned"))
    assert learned["weighted_f1"] >= 0.8 and zero["weighted_f1"] < 0.5
    assert (run / "adapter_model.safetensors").is_file() and (run / "eval/finetuned_confusion_matrix.png").is_file()
    first = json.loads((run / "eval/finetuned_predictions.jsonl").read_text().splitlines()[0])
    image = next(r for r in load_from_disk(str(small_crc / "data"))["test"] if r["id"] == first["id"])["image"]
    scope = {"image": image}
    exec(_card_snippet(run, "lora"), scope)  # the card's own code
    assert np.allclose(scope["probabilities"][0].detach().numpy(), first["scores"], atol=1e-4)


def test_the_probe_card_snippet_reproduces_the_runs_probabilities(small_crc, tmp_path):
    import numpy as np
    from datasets import load_from_disk

    run = _run(PROBE, small_crc / "data", tmp_path / "probe", "eval.baseline=false")
    first = json.loads((run / "eval/finetuned_predictions.jsonl").read_text().splitlines()[0])
    image = next(r for r in load_from_disk(str(small_crc / "data"))["test"] if r["id"] == first["id"])["image"]
    scope = {"image": image}
    exec(_card_snippet(run, "probe"), scope)
    assert np.allclose(scope["probabilities"][0].detach().numpy(), first["scores"], atol=1e-4)
