"""MedSigLIP (google/medsiglip-448), the MedGemma family's medical image encoder, as a classifier of the same
tasks and data, evaluated into the same files as a MedGemma run (so that `medtune compare` can put them side by
side):

- **zeroshot**: each image scored against one text per class (`encoder.templates` filled with the task's option
  texts), SigLIP's sigmoid image-text probabilities, averaged over the templates; the best-scoring class is the
  answer and the probabilities, renormalised over the classes, give AUROC.
- **probe**: image embeddings computed once per split, in batches, and cached beside the dataset (keyed by model,
  revision and image size); then scikit-learn's logistic regression, its C chosen on the validation split by the
  task's headline metric, as Google's data-efficient classifier notebook does. The zero-shot result is its
  out-of-box column (`eval.baseline`). The classifier is saved as probe.safetensors.

    accelerate launch medtune/train.py recipes/tissue_classification/medsiglip-probe.yaml
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medtune.config import Recipe
from medtune.errors import MedtuneError

CACHE_FOLDER = ".medtune-embeddings"  # beside the prepared dataset's splits


def load_encoder(recipe: Recipe):
    """(SiglipModel, SiglipProcessor) on this process's device, bf16 on a GPU."""
    import torch
    from accelerate import PartialState
    from transformers import AutoModel, AutoProcessor

    from medtune.model import _hub_errors, model_path, resolve_precision

    dtype = torch.bfloat16 if resolve_precision(recipe.model.precision) == "bf16" else torch.float32
    with _hub_errors(recipe.model.name_or_path):
        path = model_path(recipe)
        model = AutoModel.from_pretrained(path, revision=recipe.model.revision, dtype=dtype)
        processor = AutoProcessor.from_pretrained(path, revision=recipe.model.revision)
    if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
        raise MedtuneError(f"model.name_or_path: {recipe.model.name_or_path} has no image and text towers "
                           "(SiglipModel): MedSigLIP is google/medsiglip-448")
    return model.to(PartialState().device).eval(), processor


class _Images:
    """A DataLoader's collate_fn: rows -> the image processor's pixel values (runs in loader workers)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, rows: list[dict[str, Any]]):
        return self.image_processor(images=[row["image"].convert("RGB") for row in rows],
                                    return_tensors="pt")["pixel_values"]


def image_embeddings(model, processor, dataset, batch_size: int, num_workers: int | None, desc: str) -> np.ndarray:
    """L2-normalised image embeddings (N x D, float32) of every row, in order, batch by batch."""
    import torch
    from torch.utils.data import DataLoader

    from medtune.evaluation import default_num_workers

    if "image" not in dataset.column_names:
        raise MedtuneError("MedSigLIP takes one image an example: this dataset has none, or several (images)")
    on_cuda = model.device.type == "cuda"
    loader = DataLoader(dataset.select_columns(["image"]), batch_size=batch_size,
                        collate_fn=_Images(processor.image_processor), pin_memory=on_cuda,
                        num_workers=default_num_workers() if num_workers is None else num_workers)
    parts = []
    with torch.no_grad():
        for pixels in tqdm(loader, desc=desc, unit="batch"):
            features = model.get_image_features(pixel_values=pixels.to(model.device, model.dtype, non_blocking=on_cuda))
            features = getattr(features, "pooler_output", features)  # transformers 5 returns the model output
            parts.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), dtype=np.float32)


def cache_dir(recipe: Recipe, processor) -> Path:
    """Where a split's embeddings are kept: beside the dataset, one folder per model, revision and image size."""
    size = processor.image_processor.size
    key = json.dumps([recipe.model.name_or_path, recipe.model.revision, size.height, size.width])
    name = f"{Path(recipe.model.name_or_path).name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return Path(recipe.data.path) / CACHE_FOLDER / name


def cached_embeddings(recipe: Recipe, model, processor, dataset, split: str) -> tuple[np.ndarray, bool]:
    """(embeddings of `dataset`'s rows, whether they came from the cache). A split's rows are computed once, all
    of them (the recipe's caps select from the cache), and written atomically."""
    import os

    folder = cache_dir(recipe, processor)
    path = folder / f"{split}.npz"
    ids = list(dataset["id"])
    if path.is_file():
        stored = np.load(path, allow_pickle=False)
        where = {row_id: i for i, row_id in enumerate(stored["ids"].tolist())}
        if all(row_id in where for row_id in ids):
            return stored["embeddings"][[where[row_id] for row_id in ids]], True
    from datasets import load_from_disk

    whole = load_from_disk(recipe.data.path)[split]  # every row, so that another cap reuses them
    embeddings = image_embeddings(model, processor, whole, recipe.encoder.batch_size, recipe.encoder.num_workers,
                                  f"embedding {split}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{split}.{os.getpid()}.npz"
    np.savez(tmp, ids=np.array(list(whole["id"])), embeddings=embeddings)
    os.replace(tmp, path)
    where = {row_id: i for i, row_id in enumerate(whole["id"])}
    return embeddings[[where[row_id] for row_id in ids]], False


def zero_shot_probabilities(model, processor, image_features: np.ndarray, task, templates: list[str]) -> np.ndarray:
    """N x classes: SigLIP's sigmoid(scale * cosine + bias) of each image against each class's texts, averaged
    over the templates."""
    import torch

    texts = [template.format(option) for option in task.options for template in templates]
    inputs = processor.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                                 max_length=model.config.text_config.max_position_embeddings)
    with torch.no_grad():
        features = model.get_text_features(**{k: v.to(model.device) for k, v in inputs.items()
                                              if k in ("input_ids", "attention_mask")})
        features = getattr(features, "pooler_output", features)
        text = torch.nn.functional.normalize(features.float(), dim=-1).cpu()
        logits = torch.from_numpy(image_features) @ text.T * model.logit_scale.exp().float().cpu() \
            + model.logit_bias.float().cpu()
    probabilities = torch.sigmoid(logits).view(len(image_features), len(task.options), len(templates)).mean(-1)
    return probabilities.numpy()


def _records(task, dataset, probabilities: np.ndarray) -> tuple[list[dict], list[int], list[int], list[list[float]]]:
    """Evaluation records from per-class probabilities: the best class is the answer; scores renormalised."""
    scores = probabilities / np.clip(probabilities.sum(axis=1, keepdims=True), 1e-12, None)
    records, references, predictions = [], [], []
    for row, row_scores in zip(dataset.select_columns(["id", "label", "answer"]), scores.tolist()):
        parsed = int(np.argmax(row_scores))
        references.append(task.reference(row))
        predictions.append(parsed)
        records.append({"id": row["id"], "reference": references[-1], "reference_text": row["answer"],
                        "generated": task.option_line(parsed), "scores": row_scores, "parsed": parsed})
    return records, references, predictions, scores.tolist()


def _evaluate(task, dataset, probabilities, *, name: str, recipe: Recipe, label: str, how: dict, started: float,
              inference_seconds: float) -> dict:
    from medtune.evaluation import write_evaluation

    records, references, predictions, scores = _records(task, dataset, probabilities)
    return write_evaluation(task, records, references, predictions, scores, name=name,
                            out_dir=recipe.output_dir / "eval", model_label=label, split=recipe.eval.split,
                            how=how, seconds=time.time() - started, inference_seconds=inference_seconds)


def fit_probe(task, train: np.ndarray, train_labels: list[int], validation: np.ndarray, validation_labels: list[int],
              c_values: list[float]):
    """(the logistic regression with the best C on validation by the task's headline metric, {C: metric})."""
    from sklearn.linear_model import LogisticRegression

    headline = task.table_metrics[0]
    tried, best = {}, None
    for c in c_values:
        probe = LogisticRegression(C=float(c), max_iter=2000).fit(train, train_labels)
        metrics = task.compute_metrics(validation_labels, probe.predict(validation).tolist())
        tried[float(c)] = metrics[headline]
        if best is None or metrics[headline] > tried[best[0]]:
            best = (float(c), probe)
    return best[1], tried


def save_probe(probe, task, recipe: Recipe, out_dir: Path, tried: dict) -> Path:
    """The classifier as probe.safetensors: `coef` (classes x embedding width; one row for two classes, as
    scikit-learn keeps it), `intercept`, and what it needs to be applied in the metadata."""
    from safetensors.numpy import save_file

    metadata = {"model": recipe.model.name_or_path, "revision": str(recipe.model.revision),
                "classes": json.dumps(list(task.class_names)), "labels": json.dumps(probe.classes_.tolist()),
                "C": str(probe.C), "validation": json.dumps(tried),
                "use": "probabilities = softmax(normalize(image_embedding) @ coef.T + intercept); for two classes "
                       "sigmoid of the single column gives the second class"}
    path = out_dir / "probe.safetensors"
    save_file({"coef": probe.coef_.astype(np.float32), "intercept": probe.intercept_.astype(np.float32)}, str(path),
              metadata=metadata)
    return path


def _class_probabilities(probe, features: np.ndarray, classes: int) -> np.ndarray:
    """predict_proba over every class of the task (a class absent from training gets 0)."""
    probabilities = np.zeros((len(features), classes))
    probabilities[:, probe.classes_] = probe.predict_proba(features)
    return probabilities


def run(recipe: Recipe) -> str | None:
    """Zero-shot or probe, on the main process; returns the comparison table there."""
    import torch
    from accelerate import PartialState

    from medtune.data import load_split
    from medtune.run_info import describe_hardware, update_run_info, write_run_info
    from medtune.tasks import task_for
    from medtune.train import report_results

    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:  # one device's work: embeddings of a few thousand images
        state.wait_for_everyone()
        return None
    out_dir, method, task = recipe.output_dir, recipe.encoder.method, task_for(recipe.task)
    write_run_info(recipe, out_dir, {"method": f"MedSigLIP {method}", "hardware": describe_hardware(1)})
    model, processor = load_encoder(recipe)
    test_set = load_split(recipe, recipe.eval.split)
    label = recipe.model.name_or_path
    started = time.time()
    test, cached = cached_embeddings(recipe, model, processor, test_set, recipe.eval.split)
    embedded = time.time() - started
    results = {}
    if method == "zeroshot" or recipe.eval.baseline:
        zero_shot = zero_shot_probabilities(model, processor, test, task, recipe.encoder.templates)
        how = {"method": "zeroshot", "templates": recipe.encoder.templates, "embeddings_cached": cached}
        results["baseline"] = _evaluate(task, test_set, zero_shot, name="baseline", recipe=recipe,
                                        label=f"{label} (zero-shot)", how=how, started=started,
                                        inference_seconds=time.time() - started)
    if method == "probe":
        fit_started = time.time()
        train_set, validation_set = load_split(recipe, "train"), load_split(recipe, "validation")
        train, _ = cached_embeddings(recipe, model, processor, train_set, "train")
        validation, _ = cached_embeddings(recipe, model, processor, validation_set, "validation")
        probe, tried = fit_probe(task, train, [task.reference(r) for r in train_set.select_columns(["label"])],
                                 validation, [task.reference(r) for r in validation_set.select_columns(["label"])],
                                 recipe.encoder.probe_c)
        train_seconds = time.time() - fit_started
        save_probe(probe, task, recipe, out_dir, tried)
        how = {"method": "probe", "C": probe.C, "validation": tried, "embeddings_cached": cached}
        results["finetuned"] = _evaluate(task, test_set, _class_probabilities(probe, test, len(task.options)),
                                         name="finetuned", recipe=recipe, label=f"{label} + linear probe", how=how,
                                         started=started, inference_seconds=embedded)
        update_run_info(out_dir, {"train_seconds": round(train_seconds, 1)})
    table = report_results(recipe, task, results, test_set)
    print(f"evaluation: {out_dir / 'eval'}")
    state.wait_for_everyone()
    return table
