"""Pneumothorax detection on chest X-rays (SIIM-ACR Pneumothorax Segmentation, images with any mask are
positive). The paper's figure is the F1 of the positive class (59.7 out-of-box, 71.5 fine-tuned; accuracy
85.9 -> 87.8)."""
from medtune.tasks._multiple_choice import MultipleChoiceTask

TASK = MultipleChoiceTask(
    name="pneumothorax",
    dataset="siim_acr",
    question="Is there a pneumothorax in this chest X-ray?",
    options=("no pneumothorax", "pneumothorax"),
    class_names=("no_pneumothorax", "pneumothorax"),
    positive_label=1,
    table_metrics=("f1", "accuracy", "precision", "recall", "auroc", "unparsable"),
)
