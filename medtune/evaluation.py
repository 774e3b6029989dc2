"""Evaluate a model (base or with its adapter) on a split: greedy, batched generation with left padding,
answers parsed by the task, metrics from the task (scikit-learn), files under OUTPUT_DIR/eval/.

Every rank generates its share of the split; the main process gathers, scores and writes, once.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _prompt_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation up to the model's turn: what the model sees at test time."""
    return [m for m in messages if m["role"] != "assistant"]


def generate_answers(model, processor, rows, batch_size: int, max_new_tokens: int, desc: str,
                     show_progress: bool = True) -> list[str]:
    import torch

    model.eval()
    dtype = getattr(model, "dtype", torch.float32)
    answers: list[str] = []
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc=desc, unit="batch", disable=not show_progress):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        texts = [processor.apply_chat_template(_prompt_messages(r["messages"]), add_generation_prompt=True,
                                               tokenize=False) for r in batch]
        inputs = processor(text=texts, images=[[r["image"].convert("RGB")] for r in batch], padding=True,
                           padding_side="left",  # generation continues every row from its last token
                           add_special_tokens=False,  # the chat template already starts with <bos>
                           return_tensors="pt").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        answers += processor.batch_decode(new_tokens, skip_special_tokens=True)
    return answers


def evaluate(model, processor, dataset, task, *, name: str, out_dir: Path, batch_size: int,
             max_new_tokens: int | None, model_label: str) -> dict[str, Any] | None:
    """Writes out_dir/{name}.json (with `metrics`), {name}_predictions.jsonl and the task's figures.

    Returns the result on the main process, None on the others.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    started = time.time()
    max_new_tokens = max_new_tokens or task.max_new_tokens
    with state.split_between_processes(list(range(len(dataset)))) as shard:
        rows = dataset.select(shard) if shard else []
        texts = generate_answers(model, processor, rows, batch_size, max_new_tokens,
                                 desc=f"eval {name}", show_progress=state.is_local_main_process)
        ids = list(rows["id"]) if shard else []
    gathered = gather_object(list(zip(ids, texts)))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    by_id = dict(gathered)
    references, predictions = [], []
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{name}_predictions.jsonl", "w", encoding="utf-8") as f:
        for row in dataset.select_columns([c for c in dataset.column_names if c != "image"]):
            text = by_id[row["id"]]
            reference, parsed = task.reference(row), task.parse_answer(text)
            references.append(reference)
            predictions.append(parsed)
            f.write(json.dumps({"id": row["id"], "reference": reference, "reference_text": row["answer"],
                                "generated": text, "parsed": parsed, "correct": parsed == reference}) + "\n")
    metrics = task.compute_metrics(references, predictions)
    result = {
        "name": name, "model": model_label, "task": task.name, "split": dataset.split and str(dataset.split),
        "n": len(references), "metrics": metrics, "seconds": round(time.time() - started, 1),
        "generation": {"do_sample": False, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                       "processes": state.num_processes},
    }
    result["figures"] = [p.name for p in task.write_figures(metrics, out_dir, name)]
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def comparison_table(task, baseline: dict | None, finetuned: dict | None) -> str:
    """Markdown: task | metric | out-of-box | fine-tuned (the paper's metric first)."""
    def cell(result, key):
        value = result["metrics"].get(key) if result else None
        return "—" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))

    lines = ["| task | metric | out-of-box | fine-tuned |", "|---|---|---|---|"]
    for key in task.table_metrics:
        lines.append(f"| {task.name} | {key} | {cell(baseline, key)} | {cell(finetuned, key)} |")
    return "\n".join(lines) + "\n"
