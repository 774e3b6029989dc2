"""`medtune bench` on the model card's suite, offline: every benchmark's stand-in, in its publisher's layout, prepared
by the very command the suite prints for it (recipes/benchmarks/medgemma-card.yaml `prepare`), then run on the tiny
model; and `medtune train` with `eval.benchmarks`: the benchmark table of the base and the fine-tuned model in the
run folder, the comparison, the dashboard's scalars and the model card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medtune.suite import CARD_SUITE, load_suite
from tests.conftest import REPO, run_cli

CARD = load_suite(CARD_SUITE, "suite")
TINY = ["model.precision=fp32", "quantization.load_in_4bit=false"]


@pytest.fixture(scope="module")
def card_data(tmp_path_factory) -> Path:
    """DATA_ROOT of the card's suite: each benchmark's stand-in prepared by the suite's own command."""
    from medtune.bench import prepare_stand_ins

    root = tmp_path_factory.mktemp("card")
    prepare_stand_ins(CARD, root / "data", root / "raw")
    return root / "data"


def test_every_card_benchmark_runs_on_the_tiny_model_from_its_publishers_layout(card_data, tmp_path):
    result = run_cli("medtune", "bench", str(CARD_SUITE), "--model", "tiny", "--data-root", str(card_data),
                     "--out", str(tmp_path), "--limit", "4", "eval.max_new_tokens=8", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "bench/results.json").read_text())
    assert results["missing"] == {} and results["skipped"] == {}
    assert set(results["benchmarks"]) == {b.name for b in CARD.benchmarks}
    for benchmark in CARD.benchmarks:
        measured = results["benchmarks"][benchmark.name]["base"]
        assert measured["n"] == 4 and 0 <= measured[benchmark.metric] <= 1, benchmark.name
        assert all(metric in measured for metric in benchmark.metrics)
        protocol = results["protocols"][benchmark.name]
        assert (protocol["protocol"], protocol["mode"]) == (benchmark.protocol, benchmark.mode), benchmark.name
    table = (tmp_path / "bench/table.md").read_text()
    assert table in result.stdout  # what the terminal showed
    slake = next(line for line in table.splitlines() if line.startswith("| slake "))
    assert slake.split(" | ")[1:6] == ["4", "token_f1", "40.2", "72.3", "59.7"]  # Gemma 3, MedGemma 4B, 1.5 4B
    assert "| medqa_option_scoring † |" in table and "† not the card's protocol" in table
    # each prediction kept for a look at what the model said, under the benchmark's protocol
    records = (tmp_path / "bench/medqa/base_predictions.jsonl").read_text().splitlines()
    assert len(records) == 4
    # SLAKE: the English questions kept, the Chinese ones left out and counted
    slake_report = json.loads((card_data / "slake/prep_report.json").read_text())
    assert any("left out" in note and " zh" in note for note in slake_report["notes"]), slake_report["notes"]


def test_a_benchmark_not_prepared_is_named_with_its_command_and_the_others_run(card_data, tmp_path):
    suite = yaml.safe_load(CARD_SUITE.read_text())
    suite["benchmarks"] = [{**b, **({"data": "mmlu_not_here"} if b["name"] == "mmlu_medical" else {})}
                           for b in suite["benchmarks"] if b["name"] in ("pubmedqa", "mmlu_medical")]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = run_cli("medtune", "bench", str(path), "--model", "tiny", "--data-root", str(card_data),
                     "--out", str(tmp_path), "--limit", "2", "eval.max_new_tokens=4", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "bench/results.json").read_text())
    assert list(results["benchmarks"]) == ["pubmedqa"]
    command = f"python -m data_prep mmlu_medical --src MMLU --out {card_data / 'mmlu_not_here'}"
    assert results["missing"] == {"mmlu_medical": command}
    assert f"- mmlu_medical: not prepared — `{command}`" in (tmp_path / "bench/table.md").read_text()


def test_a_bad_suite_is_refused_in_one_line_before_the_model_loads(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "benchmarks": [
        {"name": "a", "task": "medqa", "metric": "accuracy", "protocol": "medgemma-nope",
         "prepare": "python -m data_prep medqa --src X --out {data}"}]}))
    result = run_cli("medtune", "bench", str(path), "--model", "no/such-model")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("medtune: ") and "medgemma-nope" in result.stderr


def test_a_fine_tune_with_eval_benchmarks_reports_them_for_base_and_fine_tuned(card_data, small_medqa, tmp_path):
    """A MedQA fine-tune with two of the card's benchmarks (one not prepared): the run's bench table has the base
    and the fine-tuned model and their paired difference; comparison, dashboard scalars and model card carry them."""
    suite = yaml.safe_load(CARD_SUITE.read_text())
    suite["benchmarks"] = [{**b, "max_new_tokens": 6, **({"data": "cxr14_not_here"} if b["name"] == "cxr14" else {})}
                           for b in suite["benchmarks"] if b["name"] in ("medqa", "slake", "cxr14")]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    run = tmp_path / "run"
    result = run_cli("medtune", "train", "recipes/medqa/qlora.yaml", "model.name_or_path=tiny", *TINY,
                     f"data.path={small_medqa / 'data'}", f"training.output_dir={run}", "training.num_train_epochs=1",
                     "training.per_device_train_batch_size=16", "training.eval_strategy=no",
                     "training.save_strategy=no", "training.activation_checkpointing=false",
                     "tracking.backend=tensorboard", "eval.max_new_tokens=6", "data.max_test_samples=4",
                     f"eval.benchmarks={path}", f"eval.benchmark_data={card_data}", cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "bench/results.json").read_text())
    assert {name: sorted(per) for name, per in results["benchmarks"].items()} == {
        "medqa": ["baseline", "finetuned"], "slake": ["baseline", "finetuned"]}
    assert results["missing"]["cxr14"].startswith("python -m data_prep cxr14 --src NIH-CXR14")
    difference = results["differences"]["slake"]["finetuned"]
    assert difference["low"] <= difference["difference"] <= difference["high"] and difference["n"] == \
        results["benchmarks"]["slake"]["baseline"]["n"]
    table = (run / "bench/table.md").read_text()
    assert "finetuned − baseline (95% CI)" in table and "cxr14: not prepared" in table
    assert "### Benchmarks" in (run / "eval/comparison.md").read_text()
    card = (run / "README.md").read_text()
    assert "finetuned − baseline (95% CI)" in card
    assert "name: slake token_f1" in card and "type: BoKelvin/SLAKE" in card  # model-index: one entry a benchmark
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(run.rglob("events.out.tfevents.*")).parent)).Reload()
    assert any(tag.startswith("bench/slake/") for tag in events.Tags()["scalars"]), events.Tags()["scalars"]


@pytest.mark.parametrize("entry, key", [({"published": {"google/medgemma-4b-it": "72.3"}}, "published"),
                                        ({"metrics": "closed_accuracy"}, "metrics"),
                                        ({"max_new_tokens": "512"}, "max_new_tokens")])
def test_a_suite_value_of_the_wrong_type_is_refused_when_the_suite_loads(entry, key, tmp_path):
    from medtune.errors import RecipeError

    suite = yaml.safe_load(CARD_SUITE.read_text())
    suite["benchmarks"] = [{**next(b for b in suite["benchmarks"] if b["name"] == "slake"), **entry}]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(RecipeError) as error:
        load_suite(path)
    assert error.value.key.endswith(f"(slake).{key}")


def test_a_result_is_read_back_only_for_the_same_weights_protocol_examples_and_budget(tmp_path):
    """What lets an interrupted suite resume, and keeps a retrained adapter or a changed budget from reusing."""
    import dataclasses

    from medtune.bench import Variant, _reuse, adapter_fingerprint
    from medtune.config import EvalSection

    adapter = tmp_path / "run"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"first")
    variant = Variant("run", lambda: None, fingerprint=adapter_fingerprint(adapter))
    settings = dataclasses.replace(EvalSection(), mode="generate", max_new_tokens=512)
    result = {"model": variant.model_label("google/medgemma-4b-it"), "n": 10,
              "decoding": {"mode": "generate", "max_new_tokens": 512, "protocol": "medgemma-slake"}}
    (tmp_path / "run.json").write_text(json.dumps(result))
    assert _reuse(tmp_path, "run", result["model"], "medgemma-slake", 10, settings) == result
    assert _reuse(tmp_path, "run", result["model"], "medgemma-slake", 9, settings) is None  # other examples
    assert _reuse(tmp_path, "run", result["model"], "medtune", 10, settings) is None
    assert _reuse(tmp_path, "run", result["model"], "medgemma-slake", 10,
                  dataclasses.replace(settings, max_new_tokens=8)) is None
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")  # the same folder, trained again
    again = Variant("run", lambda: None, fingerprint=adapter_fingerprint(adapter))
    assert again.model_label("google/medgemma-4b-it") != result["model"]


def test_an_adapter_of_another_base_model_is_refused_in_one_line(tmp_path):
    from medtune.bench import check_adapter_bases
    from medtune.errors import MedtuneError

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "google/medgemma-4b-it"}))
    check_adapter_bases([tmp_path], "google/medgemma-4b-it")
    with pytest.raises(MedtuneError, match="was trained on google/medgemma-4b-it, not google/gemma-3-4b-it"):
        check_adapter_bases([tmp_path], "google/gemma-3-4b-it")


@pytest.mark.launches_ranks
def test_two_ranks_run_a_suite_as_one_process_does(tmp_path):
    """`accelerate launch --num_processes 2 medtune/bench.py`: each rank answers its share (five rows: one rank's
    share padded), the main process gathers and writes once; the answers are one process's."""
    from medtune.bench import prepare_stand_ins

    names = "mimic_cxr_findings,pubmedqa"  # several questions a row (a film's findings), and text alone
    prepare_stand_ins(CARD.only(names.split(",")), tmp_path / "data", tmp_path / "raw")
    common = [str(CARD_SUITE), "--model", "tiny", "--data-root", str(tmp_path / "data"), "--only", names,
              "--limit", "5", "eval.max_new_tokens=4", "eval.num_workers=0", *TINY]
    ranks = run_cli("accelerate", "launch", "--config_file", "accelerate_configs/multi_gpu.yaml", "--num_processes",
                    "2", "medtune/bench.py", *common, "--out", str(tmp_path / "ranks"))
    assert ranks.returncode == 0, ranks.stdout[-3000:] + ranks.stderr[-3000:]
    assert ranks.stdout.count("| benchmark | n | metric |") == 1  # written once
    alone = run_cli("medtune", "bench", *common, "--out", str(tmp_path / "alone"))
    assert alone.returncode == 0, alone.stderr[-3000:]
    for name in names.split(","):
        folders = [tmp_path / out / "bench" / name for out in ("ranks", "alone")]
        results = [json.loads((folder / "base.json").read_text()) for folder in folders]
        assert [r["decoding"]["processes"] for r in results] == [2, 1] and results[0]["n"] == results[1]["n"] == 5
        predictions = [sorted((folder / "base_predictions.jsonl").read_text().splitlines()) for folder in folders]
        assert predictions[0] == predictions[1], name
