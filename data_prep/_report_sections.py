"""Sections of a free-text radiology report (MIMIC-CXR's format): INDICATION, FINDINGS, IMPRESSION.

A header is an upper-case name at the start of a line, then a colon: the rule of MIT-LCP's mimic-cxr section
parser, which this follows without copying. Names vary across reports (REASON FOR EXAMINATION, CONCLUSION,
FINDINGS AND IMPRESSION, typos such as IMPRESSON); they are normalised to the sections we use.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_HEADER = re.compile(r"\n[ \t]*([A-Z][A-Z ()/,&-]*[A-Z)]):[ \t]*")
_SECTION_NAMES = {
    "indication": "indication", "indications": "indication", "reason for exam": "indication",
    "reason for examination": "indication", "clinical indication": "indication",
    "history": "history", "clinical history": "history", "clinical information": "history",
    "patient history": "history",
    "findings": "findings", "finding": "findings",
    "impression": "impression", "impressions": "impression", "conclusion": "impression",
    "conclusions": "impression", "findings and impression": "impression", "findings/impression": "impression",
    "findings / impression": "impression", "impression and recommendations": "impression",
}
# a header that names the views ("CHEST, PA AND LATERAL:") introduces the findings in many reports
_VIEW_HEADER = re.compile(r"\b(chest|portable|pa and lat|ap and lat|two views|frontal|lateral view|one view)")


def section_name(header: str) -> str:
    name = " ".join(header.lower().split())
    if name in _SECTION_NAMES:
        return _SECTION_NAMES[name]
    for main in ("impression", "findings", "indication", "history", "addendum", "comparison"):
        if main in name:
            return main
    if _VIEW_HEADER.search(name):
        return "findings"
    close = difflib.get_close_matches(name, ["impression", "findings", "indication"], n=1, cutoff=0.8)
    return close[0] if close else name


def split_sections(text: str) -> list[tuple[str, str]]:
    """(normalised section name, text on one line) in report order; the text before the first header is
    the `preamble` (the FINAL REPORT banner, sometimes a wet read)."""
    text = "\n" + text.replace("\r\n", "\n").replace("\r", "\n")
    headers = list(_HEADER.finditer(text))
    bounds = [0, *(m.start() for m in headers), len(text)]
    names = ["preamble", *(section_name(m.group(1)) for m in headers)]
    starts = [0, *(m.end() for m in headers)]
    return [(name, " ".join(text[start:end].split())) for name, start, end in zip(names, starts, bounds[1:])]


@dataclass(frozen=True)
class ReportSections:
    indication: str
    findings: str
    impression: str


def report_sections(text: str) -> ReportSections:
    """The last non-empty INDICATION (else HISTORY), FINDINGS and IMPRESSION; empty strings when absent.
    An addendum is never part of them."""
    last: dict[str, str] = {}
    for name, body in split_sections(text):
        if body:
            last[name] = body
    return ReportSections(last.get("indication") or last.get("history", ""), last.get("findings", ""),
                          last.get("impression", ""))


def decode_report(data: bytes) -> tuple[str, bool]:
    """(text, was_utf8). Reports are ASCII; a stray byte from an editor must not lose the study."""
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), False
