"""Histopathology tissue classification (NCT-CRC-HE-100K -> CRC-VAL-HE-7K), as in Google's notebook.

Prompt and option lines are the notebook's; the class order is the dataset's folder order. The paper's
figure is weighted F1 (32.8 out-of-box, 94.5 fine-tuned).
"""
from medtune.tasks._multiple_choice import MultipleChoiceTask

TASK = MultipleChoiceTask(
    name="tissue_classification",
    dataset="crc100k",
    question="What is the most likely tissue type shown in the histopathology image?",
    options=("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
             "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
    class_names=("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"),
)
