"""MedSigLIP (google/medsiglip-448), the MedGemma family's medical image encoder, as a classifier of the same
tasks and data, evaluated into the same files as a MedGemma run (so that `medtune compare` can put them side by
side):

- **zeroshot**: each image scored against one text per class (`encoder.templates` filled with the task's option
  texts), SigLIP's sigmoid image-text probabilities, averaged over the templates; the best-scoring class is the
  answer and the probabilities, renormalised over the classes, give AUROC.
- **probe**: image embeddings computed once per split, in batches, and cached beside the dataset (keyed by model,
  its weights' commit and image size); then scikit-learn's logistic regression, its C chosen on the validation
  split by the task's headline metric, as Google's data-efficient classifier notebook does. The classifier is
  saved as probe.safetensors.
- **lora**: PEFT LoRA on the vision tower's linear layers with a classification head (transformers'
  SiglipForImageClassification, the head trained whole), by transformers' Trainer with the recipe's `training`
  section: the same tracker, checkpoints, resumption and best-checkpoint selection (on the task's metric) as a
  MedGemma run. Saved as a PEFT adapter with the image processor.

The zero-shot result is the out-of-box column of the probe and LoRA runs (`eval.baseline`).

    accelerate launch medtune/train.py recipes/tissue_classification/medsiglip-probe.yaml
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from medtune import run_folder
from medtune.config import Recipe
from medtune.embeddings import Images, cached_embeddings, pixel_batches
from medtune.errors import MedtuneError
from medtune.medsiglip import PROBE_FILE, VISION_LORA_TARGETS


def load_encoder(recipe: Recipe):
    """(SiglipModel, SiglipProcessor) on this process's device, bf16 on a GPU."""
    import torch
    from accelerate import PartialState
    from transformers import AutoModel, AutoProcessor

    from medtune.model import hub_errors, model_path, resolve_precision

    dtype = torch.bfloat16 if resolve_precision(recipe.model.precision) == "bf16" else torch.float32
    with hub_errors(recipe.model.name_or_path):
        path = model_path(recipe)
        model = AutoModel.from_pretrained(path, revision=recipe.model.revision, dtype=dtype)
        processor = AutoProcessor.from_pretrained(path, revision=recipe.model.revision)
    if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
        raise MedtuneError(f"model.name_or_path: {recipe.model.name_or_path} has no image and text towers "
                           "(SiglipModel): MedSigLIP is google/medsiglip-448")
    return model.to(PartialState().device).eval(), processor


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
                            out_dir=run_folder.eval_dir(recipe.output_dir), model_label=label, split=recipe.eval.split,
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
    path = out_dir / PROBE_FILE
    # C order: scikit-learn's coef_ may be Fortran-ordered, and safetensors writes the buffer as it lies
    save_file({"coef": np.ascontiguousarray(probe.coef_, dtype=np.float32),
               "intercept": np.ascontiguousarray(probe.intercept_, dtype=np.float32)}, str(path), metadata=metadata)
    return path


def _class_probabilities(probe, features: np.ndarray, classes: int) -> np.ndarray:
    """predict_proba over every class of the task (a class absent from training gets 0)."""
    probabilities = np.zeros((len(features), classes))
    probabilities[:, probe.classes_] = probe.predict_proba(features)
    return probabilities


class _LabelledImages(Images):
    """The training collator: pixel values and the class labels."""

    def __call__(self, rows: list[dict[str, Any]]):
        import torch

        return {"pixel_values": super().__call__(rows), "labels": torch.tensor([int(row["label"]) for row in rows])}


def _quietly(load):
    """`load()` with transformers' load report silenced: a classifier made from SiglipModel's checkpoint leaves
    its text tower out and starts its head anew, as intended."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return load()
    finally:
        logging.set_verbosity(level)


def train_lora(recipe: Recipe, task, processor):
    """(the fine-tuned SiglipForImageClassification with its adapter, training seconds): LoRA on the vision tower,
    the head trained whole, by the Trainer that MedGemma runs use (arguments, tracker, checkpoints)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import EarlyStoppingCallback, SiglipForImageClassification, Trainer

    from medtune.checkpoints import resume_checkpoint
    from medtune.data import load_split
    from medtune.model import hub_errors, model_path, resolve_precision
    from medtune.trainer import sft_config

    precision = resolve_precision(recipe.model.precision)
    args = sft_config(recipe, precision, on_cpu=not torch.cuda.is_available())
    args.remove_unused_columns = False  # the collator reads the image and label columns
    labels = dict(enumerate(task.class_names))
    with hub_errors(recipe.model.name_or_path):
        model = _quietly(lambda: SiglipForImageClassification.from_pretrained(
            model_path(recipe), revision=recipe.model.revision, num_labels=len(labels), id2label=labels,
            label2id={name: i for i, name in labels.items()},
            dtype=torch.bfloat16 if precision == "bf16" else torch.float32))
    lora = recipe.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=VISION_LORA_TARGETS, modules_to_save=["classifier"]))
    validating = args.eval_strategy != "no"

    def metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        computed = task.compute_metrics(prediction.label_ids.tolist(), logits.argmax(-1).tolist())
        return {k: v for k, v in computed.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    patience = recipe.training.get("early_stopping_patience")
    trainer = Trainer(model=model, args=args, train_dataset=load_split(recipe, "train"),
                      eval_dataset=load_split(recipe, "validation") if validating else None,
                      data_collator=_LabelledImages(processor.image_processor), processing_class=processor,
                      compute_metrics=metrics if validating else None,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)] if patience else None)
    trained = trainer.train(resume_from_checkpoint=resume_checkpoint(recipe))
    trainer.save_model(str(recipe.output_dir))  # the adapter (LoRA and head) and the processor
    return trainer.model, trained.metrics.get("train_runtime", 0.0)


def lora_probabilities(model, processor, dataset, batch_size: int, num_workers: int | None) -> np.ndarray:
    """N x classes: the fine-tuned classifier's softmax over the classes."""
    import torch

    weights = next(model.parameters())
    model.eval()
    parts = []
    with torch.no_grad():
        for pixels in pixel_batches(dataset, processor, batch_size, num_workers, weights.device, weights.dtype,
                                     "eval finetuned"):
            parts.append(model(pixel_values=pixels).logits.float().softmax(-1).cpu())
    return torch.cat(parts).numpy()


def _probe(recipe: Recipe, task, model, processor, test_set, test: np.ndarray, cached: bool) -> dict:
    """The probe's evaluation (fitted on the train split's embeddings, C chosen on validation's)."""
    from medtune.data import load_split
    from medtune.run_info import update_run_info

    started = time.time()
    train_set, validation_set = load_split(recipe, "train"), load_split(recipe, "validation")
    train, _ = cached_embeddings(recipe, model, processor, train_set, "train")
    validation, _ = cached_embeddings(recipe, model, processor, validation_set, "validation")
    probe, tried = fit_probe(task, train, [task.reference(r) for r in train_set.select_columns(["label"])],
                             validation, [task.reference(r) for r in validation_set.select_columns(["label"])],
                             recipe.encoder.probe_c)
    update_run_info(recipe.output_dir, {"train_seconds": round(time.time() - started, 1)})
    save_probe(probe, task, recipe, recipe.output_dir, tried)
    evaluating = time.time()
    probabilities = _class_probabilities(probe, test, len(task.options))
    how = {"method": "probe", "C": probe.C, "validation": tried, "embeddings_cached": cached}
    return _evaluate(task, test_set, probabilities, name="finetuned", recipe=recipe,
                     label=f"{recipe.model.name_or_path} + linear probe", how=how, started=evaluating,
                     inference_seconds=time.time() - evaluating)


def _lora(recipe: Recipe, task, processor, test_set) -> dict:
    """The LoRA classifier's evaluation, after its training."""
    from medtune.run_info import update_run_info

    classifier, train_seconds = train_lora(recipe, task, processor)
    update_run_info(recipe.output_dir, {"train_seconds": round(train_seconds, 1)})
    evaluating = time.time()
    probabilities = lora_probabilities(classifier, processor, test_set, recipe.encoder.batch_size,
                                       recipe.encoder.num_workers)
    return _evaluate(task, test_set, probabilities, name="finetuned", recipe=recipe,
                     label=f"{recipe.model.name_or_path} + LoRA and head", how={"method": "lora"},
                     started=evaluating, inference_seconds=time.time() - evaluating)


def run(recipe: Recipe) -> str | None:
    """Zero-shot, probe or LoRA, on the main process; returns the comparison table there."""
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    from medtune.comparison import report_results
    from medtune.data import load_split
    from medtune.run_info import describe_hardware, write_run_info
    from medtune.tasks import task_for

    state = PartialState(cpu=not torch.cuda.is_available())
    set_seed(recipe.training.get("seed", 42))  # the head's initialisation, as every run's, from the recipe's seed
    method, task = recipe.encoder.method, task_for(recipe.task)
    if method == "lora" and state.num_processes > 1:
        raise MedtuneError("encoder.method: lora trains in one process (a 400M-parameter tower fits one GPU): "
                           "launch it with `python medtune/train.py RECIPE`")
    if not state.is_main_process:  # one device's work: embeddings of a few thousand images
        state.wait_for_everyone()
        return None
    write_run_info(recipe, recipe.output_dir, {"method": f"MedSigLIP {method}", "hardware": describe_hardware(1)})
    model, processor = load_encoder(recipe)
    test_set = load_split(recipe, recipe.eval.split)
    results = {}
    if method != "lora" or recipe.eval.baseline:
        started = time.time()
        test, cached = cached_embeddings(recipe, model, processor, test_set, recipe.eval.split)
        if method == "zeroshot" or recipe.eval.baseline:
            zero_shot = zero_shot_probabilities(model, processor, test, task, recipe.encoder.templates)
            how = {"method": "zeroshot", "templates": recipe.encoder.templates, "embeddings_cached": cached}
            results["baseline"] = _evaluate(task, test_set, zero_shot, name="baseline", recipe=recipe,
                                            label=f"{recipe.model.name_or_path} (zero-shot)", how=how,
                                            started=started, inference_seconds=time.time() - started)
        if method == "probe":
            results["finetuned"] = _probe(recipe, task, model, processor, test_set, test, cached)
    if method == "lora":
        results["finetuned"] = _lora(recipe, task, processor, test_set)
    table = report_results(recipe, task, results, test_set)
    print(f"evaluation: {recipe.output_dir / 'eval'}")
    if method != "zeroshot":  # something was trained: its card, and the upload where asked
        from medtune.export import export

        export(recipe.output_dir, push=recipe.export.push, repo_id=recipe.export.repo_id,
               private=recipe.export.private)
    state.wait_for_everyone()
    return table
