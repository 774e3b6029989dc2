"""Chest X-ray findings as MedGemma's benchmark table reports them: one yes/no question per finding of each film,
macro F1 over the findings (medtune/tasks/_findings.py). The findings are those of the prepared data:

- MIMIC-CXR (`data_prep mimic_cxr_findings`) and CheXpert (`data_prep chexpert`): atelectasis, cardiomegaly,
  consolidation, edema, pleural effusion. MedGemma 4B IT 88.9 macro F1 on MIMIC-CXR's adjudicated test set, 40.5 on
  the MAIRA test set (original labels, uncertain and unmentioned read as negative); CheXpert 48.1.
- ChestX-ray14 (`data_prep cxr14`): lung opacity, pneumothorax and fracture, asked "Are there any fractures in the
  image?" (the report's exception). MedGemma 4B IT 50.1.

(MedGemma technical report, arXiv 2507.05201, Table 7; Gemma 3 4B scores 81.2, 26.7, 32.6 and 32.0.)
"""
from __future__ import annotations

from medtune.tasks._findings import FindingsTask, configure_findings

NAME = "cxr_findings"
READERS = ("mimic_cxr_findings", "chexpert", "cxr14")  # the data_prep readers that write its data
# The report's findings and the phrases it asks them by (Table A7), by the key their data carries
FIVE_FINDINGS = {"atelectasis": "atelectasis", "cardiomegaly": "cardiomegaly", "consolidation": "consolidation",
                 "edema": "edema", "pleural_effusion": "pleural effusion"}
CXR14_FINDINGS = {"lung_opacity": "lung opacity", "pneumothorax": "pneumothorax",
                  "fracture": "Are there any fractures in the image?"}


def configure(question: str | None, options: dict[str, str] | None) -> FindingsTask:
    return configure_findings(NAME, READERS, question, options)
