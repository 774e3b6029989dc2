"""Evaluate a model (base or with its adapter) on a split: greedy, batched generation with left padding,
answers parsed by the task, metrics from the task (scikit-learn), files under OUTPUT_DIR/eval/.

Every rank generates its share of the split, its batches prepared by DataLoader workers while the model
runs; the main process gathers, scores and writes, once.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from medtune.errors import MedtuneError, explain_out_of_memory
from medtune.pixels import model_ready, model_ready_inputs
from medtune.prompts import prompt_text
from medtune.rows import images_per_row, row_images, tokenizer_of, without_images
from medtune.run_folder import predictions_file, result_file
from medtune.tasks import is_multiple_choice
from medtune.thinking import NO_TRACE, decode_generation, split_trace, trace_counts

if TYPE_CHECKING:
    from medtune.config import EvalSection


class PromptInputs:
    """A DataLoader's collate_fn: rows -> left-padded model inputs. It runs in the loader's worker processes, so
    decoding and tokenising overlap the model's work. `processor` and `pixels` come from
    `medtune.pixels.model_ready_inputs`: images leave here as uint8 at the model's size, and the model's device
    rescales and normalises them (the image processor's float path took ~45 ms an image on one core)."""

    def __init__(self, processor, pixels, pixel_dtype):
        self.processor, self.pixels, self.pixel_dtype = processor, pixels, pixel_dtype

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [prompt_text(self.processor, r["messages"]) for r in batch]
        kwargs = dict(padding=True, padding_side="left",  # every row's next token follows its last prompt token
                      add_special_tokens=False,  # the prompt text already starts with <bos>
                      return_tensors="pt")
        images = [row_images(r) for r in batch]
        if not any(images):  # text-only rows (a processor refuses an empty image list; a tokenizer takes none)
            return dict(self.processor(text=texts, **kwargs))
        prepare = self.pixels or (lambda image: image.convert("RGB"))
        inputs = self.processor(text=texts, images=[[prepare(image) for image in row] for row in images], **kwargs)
        if self.pixels:
            model_ready(inputs["pixel_values"])
        else:  # the processor's own float values: in the model's dtype (bf16 on a GPU: half to copy)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.pixel_dtype)
        return dict(inputs)


def default_num_workers() -> int:
    """Loader workers when the recipe names none. On a GPU, one per core this process can spare, at most 8:
    they prepare the next batches while the GPU computes. On a CPU none: the model already uses every core,
    and a worker would only take cores from it (benchmarks/eval_modes.md)."""
    import os

    import torch
    from accelerate import PartialState

    if not torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cores // PartialState().num_processes - 1))


GENERATION_BATCH = 16  # each row keeps a KV cache that grows with its answer
SCORING_BATCH_RANGE = (16, 64)  # past 64 images (262k vision tokens at 896 px) a batch only adds latency


def scoring_bytes_per_image(config) -> int:
    """Memory one more image takes in a no-grad scoring forward, from the model's shapes: no KV cache and one
    layer's activations at a time (hidden states, attention projections and the MLP's two wide halves), in the
    vision tower (its patches) and the language model (its image tokens and a prompt), plus the attention
    weights where the tower runs eager attention. ~0.26 GB at MedGemma 4B's shape."""
    vision, text = config.vision_config, config.get_text_config()
    patches = (vision.image_size // vision.patch_size) ** 2
    tokens = config.mm_tokens_per_image + 128
    values = patches * (4 * vision.hidden_size + 2 * vision.intermediate_size)
    values += tokens * (4 * text.hidden_size + 2 * text.intermediate_size)
    if getattr(vision, "_attn_implementation", "sdpa") == "eager":
        values += vision.num_attention_heads * patches ** 2
    return values * 4  # float32 at worst (softmax, norms)


def default_batch_size(model, mode: str, images_per_row: int = 1) -> int:
    """eval.batch_size (rows) when the recipe leaves it unset: 16 images' worth when generating; when scoring on
    a GPU, as many images as fit in half of the memory still free (scoring keeps no cache), within
    SCORING_BATCH_RANGE; at least one row, however many images it holds (a CT series), and 16 rows of text. The
    same on every rank (the smallest): under ZeRO-3 each forward is collective, so ranks must run as many."""
    import torch
    from accelerate.utils import gather_object

    per_row = max(1, images_per_row)
    if mode != "score" or model.device.type != "cuda" or not hasattr(model.config, "vision_config"):
        return max(1, GENERATION_BATCH // per_row)
    free, _ = torch.cuda.mem_get_info(model.device)
    free += torch.cuda.memory_reserved(model.device) - torch.cuda.memory_allocated(model.device)  # ours to reuse
    low, high = SCORING_BATCH_RANGE
    fits = max(low, min(high, free // 2 // scoring_bytes_per_image(model.config)))
    return max(1, min(gather_object([fits])) // per_row)


def _prompt_batches(model, processor, rows, batch_size: int, desc: str, show_progress: bool,
                    num_workers: int | None = None):
    """Left-padded model inputs for the prompts of `rows`, a batch at a time, on the model's device, prepared
    by `num_workers` loader processes (0: in this process; None: `default_num_workers()`)."""
    import torch
    from torch.utils.data import DataLoader

    on_cuda = model.device.type == "cuda"
    pixel_dtype = getattr(model, "dtype", torch.float32)
    ready_processor, pixels = model_ready_inputs(model, processor)
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=PromptInputs(ready_processor, pixels, pixel_dtype),
                        num_workers=default_num_workers() if num_workers is None else num_workers,
                        pin_memory=on_cuda)  # pinned pages copy to the GPU asynchronously
    for inputs in tqdm(loader, desc=desc, unit="batch", disable=not show_progress):
        yield {k: v.to(model.device, non_blocking=on_cuda) for k, v in inputs.items()}  # all tensors


def generate_answers(model, processor, rows, batch_size: int, max_new_tokens: int, desc: str,
                     show_progress: bool = True, num_workers: int | None = None) -> list[str]:
    """Greedy generation, batched."""
    import torch

    model.eval()
    answers: list[str] = []
    for inputs in _prompt_batches(model, processor, rows, batch_size, desc, show_progress, num_workers):
        # no_grad, not inference_mode: ZeRO-3 gathers weights during the forward, and tensors made under
        # inference_mode could never take gradients again (PEFT re-enables the adapter after the baseline)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        generated = out[:, inputs["input_ids"].shape[1]:].tolist()
        answers += [decode_generation(tokenizer_of(processor), ids) for ids in generated]
    return answers


def option_first_tokens(tokenizer, task) -> list[int]:
    """The token each option line starts with (its letter); they must differ for scoring to tell them apart."""
    ids = [tokenizer(task.option_line(i), add_special_tokens=False)["input_ids"][0] for i in range(len(task.options))]
    if len(set(ids)) != len(ids):
        raise MedtuneError(f"eval.mode=score: the options of {task.name} do not start with distinct tokens")
    return ids


def score_options(model, processor, rows, option_ids: list[int], batch_size: int, desc: str,
                  show_progress: bool = True, num_workers: int | None = None) -> list[list[float]]:
    """One forward pass over each prompt: the probability of each option's first token, renormalised over
    the options. Never unparsable, gives scores (hence AUROC), and needs no decoding loop."""
    import torch

    model.eval()
    scores = []
    for inputs in _prompt_batches(model, processor, rows, batch_size, desc, show_progress, num_workers):
        with torch.no_grad():  # see generate_answers
            # the next-token logits only, and no KV cache: nothing is decoded after this pass
            logits = model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1, :]
        # kept on the device: reading them here would make the host wait for every batch before queueing the next
        scores.append(logits[:, option_ids].float().softmax(dim=-1))
    return torch.cat(scores).tolist() if scores else []


def _predict(model, processor, dataset, task, settings: EvalSection, mode: str, desc: str):
    """Every rank predicts its share of `dataset` (greedy answers, or option scores in mode "score"); the main
    process gathers them: (records, references, predictions, scores, how, inference seconds), None on the
    other ranks."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    batch_size = settings.batch_size or default_batch_size(model, mode, images_per_row(dataset))
    workers = default_num_workers() if settings.num_workers is None else settings.num_workers
    max_new_tokens = settings.max_new_tokens or task.max_new_tokens
    show = state.is_local_main_process
    # Equal shards (the last padded with a repeat, dropped when gathering by id): under ZeRO-3 every forward is
    # collective, so all ranks must run the same number of batches.
    with state.split_between_processes(list(range(len(dataset))), apply_padding=True) as shard, \
            explain_out_of_memory("evaluating", f"lower eval.batch_size (now {batch_size})"):
        rows = dataset.select(shard) if shard else []
        inference_started = time.time()
        if not shard:
            outputs = []
        elif mode == "score":
            option_ids = option_first_tokens(tokenizer_of(processor), task)
            outputs = score_options(model, processor, rows, option_ids, batch_size, desc, show, workers)
        else:
            outputs = generate_answers(model, processor, rows, batch_size, max_new_tokens, desc, show, workers)
        ids = list(rows["id"]) if shard else []
        inference_seconds = time.time() - inference_started  # images in, answers out: what eval speed means
    gathered = gather_object(list(zip(ids, outputs)))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    by_id = dict(gathered)
    records, references, predictions, scores = [], [], [], []
    for row in without_images(dataset):
        output, reference = by_id[row["id"]], task.reference(row)
        record = {"id": row["id"], "reference": reference, "reference_text": row["answer"]}
        if mode == "score":
            offered = task.option_count(row)
            if offered < len(output):  # a question with fewer options than the task has letters (MedQA's 4)
                total = sum(output[:offered]) or 1.0
                output = [v / total for v in output[:offered]] + [0.0] * (len(output) - offered)
            parsed = max(range(len(output)), key=output.__getitem__)
            record.update(generated=task.option_line(parsed), scores=output)
            scores.append(output)
        else:
            answer, trace = split_trace(output)  # the raw output, trace and all, stays in the record
            parsed = task.parse_answer(answer)
            record["generated"] = output
            if trace != NO_TRACE:
                record["trace"] = trace
        references.append(reference)
        predictions.append(parsed)
        records.append({**record, "parsed": parsed})
    how = {"mode": mode, "batch_size": batch_size, "processes": state.num_processes, "loader_workers": workers,
           **({"do_sample": False, "max_new_tokens": max_new_tokens} if mode == "generate" else {})}
    return records, references, predictions, scores if mode == "score" else None, how, inference_seconds


def evaluate(model, processor, dataset, task, settings: EvalSection, *, name: str, out_dir: Path,
             model_label: str) -> dict[str, Any] | None:
    """Writes out_dir/{name}.json (with `metrics`), {name}_predictions.jsonl and the task's figures.

    `settings` is the recipe's eval section (its `split` names what `dataset` is: a split data_prep drew from a
    pool carries the pool's name in `datasets`): mode "generate" is greedy generation, answers parsed by the task
    (the paper's way, the default); mode "score" is option scoring (classification tasks). Returns the result
    on the main process only.
    """
    started = time.time()
    predicted = _predict(model, processor, dataset, task, settings, settings.mode,
                         f"eval {name} ({settings.mode})")
    if predicted is None:
        return None
    records, references, predictions, scores, how, inference_seconds = predicted
    return write_evaluation(task, records, references, predictions, scores, name=name, out_dir=out_dir,
                            model_label=model_label, split=settings.split, how=how,
                            seconds=time.time() - started, inference_seconds=inference_seconds)


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
