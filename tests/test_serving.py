"""Serving what medtune trains, for real: `transformers serve` (an OpenAI-compatible server that runs in this
environment) serves the tiny twin and the demo's merged adapter; `medtune eval --served` asks it the demo's test
questions and must answer as medtune's in-process evaluation did. vLLM is checked outside CI
(benchmarks/serve_vllm.sh: its install is over 5 GB)."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from medtune.tiny import tiny_checkpoint_dir
from tests.conftest import run_cli

SUBSET = 16  # of the demo's 108 test images: each served answer costs a request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_server(port: int, log: Path) -> subprocess.Popen:
    """`transformers serve` on `port`, models loaded on demand by the path a request names; returns once it
    answers."""
    from urllib.request import urlopen

    process = subprocess.Popen(["transformers", "serve", "--port", str(port), "--device", "cpu"],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    give_up = time.monotonic() + 180
    while time.monotonic() < give_up:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited: {log.read_text()[-2000:]}")
        try:
            urlopen(f"http://localhost:{port}/v1/models", timeout=2).read()
            return process
        except OSError:
            time.sleep(0.5)
    pytest.fail("transformers serve did not start")


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the server and whatever it started
    process.wait()


@pytest.fixture(scope="module")
def served_demo(demo_run, tmp_path_factory):
    """(run folder, a prepared copy of the demo's data holding the first SUBSET test images, the merged model)."""
    from datasets import DatasetDict, load_from_disk

    workdir = demo_run[0]
    run, root = workdir / "run-lora", tmp_path_factory.mktemp("served")
    if not (run / "merged" / "config.json").is_file():
        result = run_cli("medtune", "export", str(run), "--merge")
        assert result.returncode == 0, result.stderr[-2000:]
    splits = load_from_disk(str(workdir / "data"))
    DatasetDict({**splits, "test": splits["test"].select(range(SUBSET))}).save_to_disk(str(root / "data"))
    (root / "data" / "prep_report.json").write_text((workdir / "data" / "prep_report.json").read_text())
    return run, root / "data", run / "merged"


@pytest.fixture(scope="module")
def server(served_demo, tmp_path_factory):
    """(its URL, its log) of `transformers serve`, for the module's tests."""
    port, log = _free_port(), tmp_path_factory.mktemp("server") / "serve.log"
    process = _start_server(port, log)
    yield f"http://localhost:{port}", log
    _stop(process)


def _requests(server_log: Path) -> int:
    """How many questions a server has been asked (its access log's lines)."""
    return server_log.read_text().count("POST /v1/chat/completions")


def _eval_served(run: Path, data: Path, url: str, model: Path, name: str, *extra: str) -> tuple[int, str]:
    """`medtune eval RECIPE --served URL ...`, through the command's own entry point in this process (the server
    is the other process): (exit code, what it said on stderr)."""
    from medtune.cli import main

    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        code = main(["eval", str(run / "recipe.yaml"), f"data.path={data}", "--served", url, "--served-model",
                     str(model), "--name", name, *extra])
    return code, said.getvalue()


def _predictions(path: Path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _same_answers(served: dict, in_process: dict) -> None:
    for row_id, record in served.items():
        theirs = in_process[row_id]
        assert record["parsed"] == theirs["parsed"], row_id
        assert record["generated"].strip() == theirs["generated"].strip(), row_id


def test_served_evaluation_answers_as_the_in_process_one(served_demo, server):
    run, data, merged = served_demo
    url, _ = server
    code, said = _eval_served(run, data, url, merged, "served")
    assert code == 0, said[-2000:]
    served = _predictions(run / "eval" / "served_predictions.jsonl")
    assert len(served) == SUBSET
    _same_answers(served, _predictions(run / "eval" / "finetuned_predictions.jsonl"))
    written = json.loads((run / "eval" / "served.json").read_text())
    assert written["model"] == f"{merged} (served at {url})" and written["n"] == SUBSET
    assert written["decoding"]["served"] == url and written["decoding"]["do_sample"] is False
    assert written["metrics"]["accuracy"] == 1.0  # the demo's fine-tune learned the task: so has its merged copy
    assert not (run / "eval" / "served.served.jsonl").exists()  # a finished run's answer log is not reused


def test_a_server_without_log_probabilities_is_said_to_allow_generation_only(served_demo, server):
    run, data, merged = served_demo
    code, said = _eval_served(run, data, server[0], merged, "served-scores", "eval.mode=score")
    lines = [line for line in said.splitlines() if line.startswith("medtune:")]
    assert code == 2 and len(lines) == 1, said
    assert "log-probabilities" in lines[0] and "use eval.mode=generate" in lines[0]


def test_a_server_that_drops_mid_run_leaves_a_complete_evaluation_after_a_rerun(served_demo, server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    run, data, merged = served_demo
    log = run / "eval" / "dropped.served.jsonl"
    port = _free_port()
    doomed = _start_server(port, tmp_path / "doomed.log")
    with ThreadPoolExecutor(1) as pool:
        evaluation = pool.submit(_eval_served, run, data, f"http://localhost:{port}", merged, "dropped",
                                 "--requests-in-flight", "2", "--retries", "1")
        try:
            give_up = time.monotonic() + 120
            while not (log.is_file() and len(log.read_text().splitlines()) >= 3):  # some answers are in
                assert not evaluation.done() and time.monotonic() < give_up, evaluation.result()
                time.sleep(0.05)
        finally:
            _stop(doomed)  # the server goes away mid-run
        code, said = evaluation.result(timeout=300)
    assert code == 2 and "rerun the same command" in said, said
    assert not (run / "eval" / "dropped.json").exists()  # no metrics from part of the split
    answered_first = [e["key"] for e in map(json.loads, log.read_text().splitlines()) if "answer" in e]
    assert 3 <= len(answered_first) < SUBSET

    # the rerun, against a server elsewhere serving the same model, asks only for what is missing
    url, server_log = server
    asked_before = _requests(server_log)
    code, said = _eval_served(run, data, url, merged, "dropped", "--requests-in-flight", "4")
    assert code == 0, said[-2000:]
    assert _requests(server_log) - asked_before == SUBSET - len(answered_first)
    assert not log.exists()  # removed once every question had its answer
    predictions = _predictions(run / "eval" / "dropped_predictions.jsonl")
    assert len(predictions) == SUBSET
    _same_answers(predictions, _predictions(run / "eval" / "finetuned_predictions.jsonl"))


def test_export_merge_writes_the_base_checkpoints_weight_names_and_shapes(served_demo, tmp_path):
    from safetensors import safe_open

    from medtune.errors import MedtuneError
    from medtune.export import check_same_layout, weight_shapes
    from medtune.tiny import build_tiny_model, build_tiny_processor

    _, _, merged = served_demo
    base = tiny_checkpoint_dir()
    with safe_open(str(base / "model.safetensors"), "pt") as f:  # the twin is laid out as Google's checkpoints
        names = list(f.keys())
    assert any(n.startswith("vision_tower.vision_model.encoder.") for n in names)
    assert not any(n.startswith("vision_tower.encoder.") for n in names)
    assert weight_shapes(merged) == weight_shapes(base)
    for file in ("chat_template.jinja", "generation_config.json", "processor_config.json", "tokenizer.json"):
        assert (merged / file).is_file(), file
    # a checkpoint under transformers' internal names (a model built, not loaded, then saved) is told apart
    build_tiny_model(build_tiny_processor().tokenizer).save_pretrained(tmp_path / "internal")
    with pytest.raises(MedtuneError, match=r"not named as .*first: vision_tower\.vision_model\.") as refused:
        check_same_layout(merged, tmp_path / "internal")
    assert "\n" not in str(refused.value)


def test_served_evaluation_refuses_what_it_cannot_do_in_one_line(served_demo):
    run, data, _ = served_demo
    port = _free_port()  # nothing listens there
    code, said = _eval_served(run, data, f"http://localhost:{port}", Path("m"), "x")
    assert code == 2 and "no server answers there" in said, said
    code, said = _eval_served(run, data, f"http://localhost:{port}", Path("m"), "x", "--adapter", str(run))
    assert code == 2 and "--lora-modules" in said, said


# ----------------------------------------------------------------------------- requests, without a server
def test_a_question_goes_out_as_chat_messages_with_its_images_losslessly_in_order():
    from PIL import Image

    from medtune.prompts import user_turn
    from medtune.served import chat_messages

    images = [Image.new("RGB", (8, 8), (10 * i, 200, 30)) for i in range(2)]
    images[1].putpixel((3, 4), (1, 2, 3))
    conversation = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                    user_turn("Which is larger?", 2, ["Figure A", "Figure B"])]
    messages = chat_messages(conversation, images)
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert [p["text"] for p in parts if p["type"] == "text"] == ["Figure A", "Figure B", "Which is larger?"]
    for part, image in zip((p for p in parts if p["type"] == "image_url"), images):
        header, payload = part["image_url"]["url"].split(",", 1)
        assert header == "data:image/png;base64"
        assert list(Image.open(io.BytesIO(base64.b64decode(payload))).getdata()) == list(image.getdata())


@pytest.mark.parametrize("reply, cut", [
    ("The lungs are clear.\nFinal Answer: no\nBecause the film shows", "The lungs are clear.\nFinal Answer: no\n"),
    ("Final Answer: (C)\n\nExplanation: ...", "Final Answer: (C)\n"),
    ("Final Answer:\n(B)\nmore", "Final Answer:\n(B)\n"),  # the answer on the next line
    ("Final Answer: yes", "Final Answer: yes"),  # never ended its line: nothing to cut
    ("no marker\nat all\n", "no marker\nat all\n"),
    ("<unused94>thought\nFinal Answer: A\nhmm<unused95>Final Answer: B\nafter",  # an open trace is not the reply
     "<unused94>thought\nFinal Answer: A\nhmm<unused95>Final Answer: B\n"),
])
def test_a_served_reply_is_cut_where_in_process_generation_stops(reply, cut):
    from medtune.tasks._medgemma_prompts import through_final_answer
    from medtune.thinking import TRACE_CLOSE, TRACE_OPEN

    assert through_final_answer(reply, TRACE_OPEN, TRACE_CLOSE) == cut



def test_the_card_says_how_to_serve_and_asks_as_training_did(served_demo):
    from datasets import load_from_disk

    run, data, merged = served_demo
    card = (run / "README.md").read_text()
    serve = card.split("## Serve", 1)[1].split("## Recipe", 1)[0]
    assert "vllm serve" in serve and "--enable-lora --lora-modules" in serve and "transformers serve" in serve
    request = json.loads(serve.split("```json", 1)[1].split("```", 1)[0])
    assert request["temperature"] == 0
    trained = load_from_disk(str(data))["train"][0]["messages"]
    asked = [item["text"] for m in trained if m["role"] == "user" for item in m["content"] if item["type"] == "text"]
    assert [p["text"] for p in request["messages"][0]["content"] if p["type"] == "text"] == asked
    assert [p["type"] for p in request["messages"][0]["content"]] == ["image_url", "text"]
    merged_serve = (merged / "README.md").read_text().split("## Serve", 1)[1]
    assert "transformers serve" in merged_serve and "--enable-lora" not in merged_serve


def test_a_suite_runs_on_served_models_the_first_as_base_and_the_others_as_its_adapters(served_demo, server, tmp_path):
    from medtune.bench import main as bench_main

    run, data, merged = served_demo
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: demo\nbenchmarks:\n  - name: crc\n    task: tissue_classification\n    metric: accuracy\n"
                     "    prepare: python -m data_prep crc100k --src CRC --out {data}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "crc").symlink_to(data)
    code = bench_main([str(suite), "--model", "tiny", "--served", server[0], "--served-model",
                       str(tiny_checkpoint_dir()), "--served-model", str(merged), "--data-root", str(tmp_path / "data"),
                       "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    measured = results["benchmarks"]["crc"]
    base, adapter = f"served-{tiny_checkpoint_dir().name}", "served-merged"
    assert measured[adapter]["accuracy"] == 1.0 and measured[adapter]["n"] == SUBSET
    assert adapter in results["differences"]["crc"]  # the adapter against the base, paired
    _same_answers(_predictions(tmp_path / "bench" / "crc" / f"{base}_predictions.jsonl"),
                  _predictions(run / "eval" / "baseline_predictions.jsonl"))
