"""Evaluate a model (base or with its adapter) on a split: the task's questions answered by greedy generation
(or option scoring), answers parsed by the task, metrics from the task, files under OUTPUT_DIR/eval/.

Every rank answers its share of the split (medtune/inference.py); the main process gathers, scores and writes,
once. A task may ask several questions of a row (one per chest X-ray finding): the row's prediction is then one
answer per question.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtune.errors import MedtuneError, explain_out_of_memory
from medtune.rows import images_per_row, tokenizer_of, without_images
from medtune.run_folder import predictions_file, result_file, served_log_file
from medtune.tasks import is_multiple_choice
from medtune.tasks._medgemma_prompts import asks_final_answer
from medtune.thinking import NO_TRACE, split_trace, trace_counts

if TYPE_CHECKING:
    from medtune.config import EvalSection


def asks_several(task) -> bool:
    """Whether the task's prediction for a row is a list, one answer per question it asks (chest X-ray findings)."""
    return getattr(task, "independent_questions", False)


def _answer(model, processor, rows, task, mode: str, batch_size: int, max_new_tokens: int, desc: str,
            show: bool, workers: int, served_log: Path | None = None) -> list[list]:
    """This rank's answers to the questions of `rows`: for each row, a reply (or option scores) per question. The
    model is a loaded one, or a `medtune.served.Server` (its answers logged to `served_log` as they arrive)."""
    from medtune.inference import Questions, generate_answers, question_order, score_options, scoring_plan
    from medtune.served import Server, served_answers

    order = question_order(task, rows)
    questions = Questions(task, rows, order)
    if isinstance(model, Server):
        opening, option_ids = scoring_plan(tokenizer_of(processor), task) if mode == "score" else ("", None)
        flat = served_answers(model, questions, served_log, mode=mode, max_new_tokens=max_new_tokens,
                              cut=_served_cut(task, processor), opening=opening, option_ids=option_ids, desc=desc,
                              show_progress=show)
    elif mode == "score":
        opening, option_ids = scoring_plan(tokenizer_of(processor), task)
        flat = score_options(model, processor, questions, option_ids, batch_size, desc, show, workers,
                             answer_prefix=opening)
    else:
        flat = generate_answers(model, processor, questions, batch_size, max_new_tokens, desc, show, workers,
                                stop_after_final_answer=asks_final_answer(task))
    per_row: list[list] = [[] for _ in range(len(rows))]
    for (i, _), output in sorted(zip(order, flat), key=lambda pair: pair[0]):  # back in the rows' order
        per_row[i].append(output)
    return per_row


def _served_cut(task, processor):
    """How a served reply is cut to read as the in-process one (a server cannot stop where FinalAnswerStop does)."""
    from medtune.tasks._medgemma_prompts import through_final_answer
    from medtune.thinking import TRACE_CLOSE, TRACE_OPEN

    if not asks_final_answer(task):
        return None
    return lambda text: through_final_answer(text, TRACE_OPEN, TRACE_CLOSE)


def _predict(model, processor, dataset, task, settings: EvalSection, mode: str, desc: str,
             served_log: Path | None = None):
    """Every rank answers the questions of its share of `dataset` (greedy replies, or option scores in mode
    "score"); the main process gathers them: (records, references, predictions, scores, how, inference seconds),
    None on the other ranks. A served model (`medtune.served.Server`) is asked from one process."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from medtune.inference import default_batch_size, default_num_workers
    from medtune.served import Server

    state = PartialState()
    served = isinstance(model, Server)
    if served and state.num_processes > 1:
        raise MedtuneError("a served model is asked from one process (the server batches): run without "
                           "accelerate launch")
    batch_size = model.in_flight if served else \
        settings.batch_size or default_batch_size(model, mode, images_per_row(dataset))
    workers = 0 if served else default_num_workers() if settings.num_workers is None else settings.num_workers
    max_new_tokens = settings.max_new_tokens or task.max_new_tokens
    show = state.is_local_main_process
    # Equal shards (the last padded with a repeat, dropped when gathering by id): under ZeRO-3 every forward is
    # collective, so all ranks must run the same number of batches.
    with state.split_between_processes(list(range(len(dataset))), apply_padding=True) as shard, \
            explain_out_of_memory("evaluating", f"lower eval.batch_size (now {batch_size})"):
        rows = dataset.select(shard) if shard else []
        inference_started = time.time()
        outputs = _answer(model, processor, rows, task, mode, batch_size, max_new_tokens, desc, show, workers,
                          served_log) if shard else []
        ids = list(rows["id"]) if shard else []
        inference_seconds = time.time() - inference_started  # images in, answers out: what eval speed means
    gathered = gather_object(list(zip(ids, outputs)))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    by_id, several = dict(gathered), asks_several(task)
    records, references, predictions, scores = [], [], [], []
    for row in without_images(dataset):
        outputs, reference = by_id[row["id"]], task.reference(row)
        record = {"id": row["id"], "reference": reference, "reference_text": row["answer"]}
        if mode == "score":
            offered = task.option_count(row)
            outputs = [_offered_only(output, offered) for output in outputs]
            parsed = [max(range(len(output)), key=output.__getitem__) for output in outputs]
            generated = [getattr(task, "answer_prefix", "") + task.option_line(p) for p in parsed]
            record["scores"] = outputs if several else outputs[0]
            scores.append(record["scores"])
        else:
            answers, traces = zip(*(split_trace(output) for output in outputs))  # raw output, trace and all, kept
            parsed, generated = [task.parse_answer(answer) for answer in answers], list(outputs)
            if any(trace != NO_TRACE for trace in traces):
                record["trace"] = list(traces) if several else traces[0]
        record["generated"] = generated if several else generated[0]
        references.append(reference)
        predictions.append(parsed if several else parsed[0])
        records.append({**record, "parsed": predictions[-1]})
    how = {"mode": mode, **({"served": model.url, "served_model": model.model, "requests_in_flight": batch_size}
                            if served else {"batch_size": batch_size, "processes": state.num_processes,
                                            "loader_workers": workers}),
           **({"do_sample": False, "max_new_tokens": max_new_tokens} if mode == "generate" else {}),
           **({"protocol": task.protocol} if len(getattr(task, "protocols", ())) > 1 else {})}
    return records, references, predictions, scores if mode == "score" else None, how, inference_seconds


def _offered_only(output: list[float], offered: int) -> list[float]:
    """Option scores renormalised over the options a question offers (MedQA's 4 of the task's letters)."""
    if offered >= len(output):
        return output
    total = sum(output[:offered]) or 1.0
    return [v / total for v in output[:offered]] + [0.0] * (len(output) - offered)


def evaluate(model, processor, dataset, task, settings: EvalSection, *, name: str, out_dir: Path,
             model_label: str) -> dict[str, Any] | None:
    """Writes out_dir/{name}.json (with `metrics`), {name}_predictions.jsonl and the task's figures.

    `settings` is the recipe's eval section (its `split` names what `dataset` is: a split data_prep drew from a
    pool carries the pool's name in `datasets`): mode "generate" is greedy generation, answers parsed by the task
    (the paper's way, the default); mode "score" is option scoring (classification tasks). Returns the result
    on the main process only.
    """
    started = time.time()
    served_log = Path(out_dir) / served_log_file(name)
    predicted = _predict(model, processor, dataset, task, settings, settings.mode,
                         f"eval {name} ({settings.mode})", served_log=served_log)
    if predicted is None:
        return None
    records, references, predictions, scores, how, inference_seconds = predicted
    result = write_evaluation(task, records, references, predictions, scores, name=name, out_dir=out_dir,
                              model_label=model_label, split=settings.split, how=how,
                              seconds=time.time() - started, inference_seconds=inference_seconds)
    # a served run's answer log resumes an unfinished run only: a later one (the adapter retrained and served under
    # the same name) asks anew
    served_log.unlink(missing_ok=True)
    return result


def write_evaluation(task, records: list[dict], references: list, predictions: list, scores: list | None, *,
                     name: str, out_dir: Path, model_label: str, split: str | None, how: dict, seconds: float,
                     inference_seconds: float) -> dict[str, Any]:
    """The evaluation files of any model on a split, from its predictions (a record per example: id, reference,
    reference_text, generated, parsed, and scores where it has them): out_dir/{name}.json (with `metrics`),
    {name}_predictions.jsonl and the task's figures. Returns the result."""
    metrics = {**task.compute_metrics(references, predictions, scores), **trace_counts(records)}
    out_dir.mkdir(parents=True, exist_ok=True)
    per_example = metrics.pop("per_example")  # the task's scores of each example: saved with its prediction
    with open(out_dir / predictions_file(name), "w", encoding="utf-8") as f:
        for record, example in zip(records, per_example):
            f.write(json.dumps({**record, **example}) + "\n")
    result = {
        "name": name, "model": model_label, "task": task.name, "split": split, "n": len(references),
        "metrics": metrics, "seconds": round(seconds, 1), "inference_seconds": round(inference_seconds, 2),
        "decoding": how,
    }
    result["figures"] = [p.name for p in task.write_figures(metrics, per_example, out_dir, name)]
    (out_dir / result_file(name)).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def validation_metrics(model, processor, dataset, task, settings: EvalSection) -> dict[str, Any]:
    """The task's metrics on the validation split during training, computed as the final evaluation computes
    them: by option scoring where the task has options (one forward a batch: cheap), else by greedy generation
    on the first `eval.validation_generations` rows. Numbers, and `<metric>_unavailable` reasons; the same on
    every rank (each scores its share, the main process computes, then tells the others)."""
    from accelerate.utils import broadcast_object_list

    mode = "score" if is_multiple_choice(task) else "generate"
    if mode == "generate":
        dataset = dataset.select(range(min(settings.validation_generations, len(dataset))))
    predicted = _predict(model, processor, dataset, task, settings, mode, f"validation ({mode})")
    summary = None
    if predicted is not None:
        records, references, predictions, scores, _, _ = predicted
        metrics = {**task.compute_metrics(references, predictions, scores), **trace_counts(records)}
        summary = {k: v for k, v in metrics.items()
                   if (isinstance(v, (int, float)) and not isinstance(v, bool)) or k.endswith("_unavailable")}
    return broadcast_object_list([summary])[0]
