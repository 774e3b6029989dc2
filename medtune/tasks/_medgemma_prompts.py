"""The prompts MedGemma's published benchmark figures were measured with, word for word, and how their answers are
read: after "Final Answer:".

Sources (quoted as the stored copies print them; a PDF's typographic quotes and line breaks may differ from the
original's, see each note):
- REPORT: MedGemma Technical Report, arXiv 2507.05201 (v4), Appendix B "Evaluation Prompts": Table A6 "Zero shot
  prompts for text-based medical evaluations" and Table A7 "Zero-shot prompts for image classification and VQA
  evaluations". The MedGemma 4B IT model card's figures. MedGemma itself gets no system prompt ("For all but the
  medical MedGemma and Med-Gemini models, the prompts below were prefixed with the following system message").
  Decoding: "a temperature of 0.0 was used on medical benchmarks", "a single inference run per example" (section 3.1).
- REPORT_1_5: MedGemma 1.5 Technical Report, arXiv 2604.05081, Appendix B "Prompts", Tables 7-9: the MedGemma 1.5
  4B model card's figures. "MedGemma models do not have a system instruction (system prompt)"; thinking is turned on
  for the text multiple-choice benchmarks "by appending "SYSTEM INSTRUCTION: think silently if needed." to the
  system prompt".

A template here is a format string: {question}, {context}, {finding}. The reports write `<IMAGE> + ...`: the image
comes first, which is where every prompt of medtune puts it.
"""
from __future__ import annotations

import re

REPORT = "MedGemma Technical Report (arXiv 2507.05201), Appendix B, Tables A6 and A7"
REPORT_1_5 = "MedGemma 1.5 Technical Report (arXiv 2604.05081), Appendix B, Tables 7 to 9"
FINAL_ANSWER = "Final Answer:"

# ----------------------------------------------------------------------------- Table A6 (text, multiple choice)
_A6_INSTRUCTIONS = ("Instructions: The following are multiple choice questions about medical knowledge. Solve them in "
                    "a step-by-step fashion, starting by summarizing the available information. Output a single option "
                    "from the four options as the final answer. ")
_A6_RESPONSE = ("Response (think step by step and then end with \"Final Answer:\" followed by *only* the letter "
                "corresponding to the correct answer enclosed in parentheses)")
A6_MEDQA = _A6_INSTRUCTIONS + "Question: {question} " + _A6_RESPONSE  # Table A6, MedQA (and MMLU, the same words)
A6_MEDMCQA = _A6_INSTRUCTIONS + "Question: {question}" + _A6_RESPONSE  # Table A6, MedMCQA: no space before Response
# Table A6, PubMedQA. The table prints `Context: " + <CONTEXT> " + Question: "`: the context, then " Question: "
A6_PUBMEDQA = (_A6_INSTRUCTIONS + "Answer the following question given the context (reply with one of the options): "
               "Context: {context} Question: {question} " + _A6_RESPONSE)
# Table A6, MedXpertQA (text); the stored copy prints these quotes as typographic ones
A6_MEDXPERTQA = ("{question} Response (think step by step through each of the multiple choice options. You MUST end "
                 "your response with \u2018Final Answer:\u2019 followed by *only* the letter corresponding to the "
                 "correct answer enclosed in parentheses) like \u2018Final Answer:(X)\u2019.")
# Table A7, MedXpertQA (multimodal questions): `"Figure A" + <IMAGE_A> + "Figure B" + <IMAGE_B> + ... + "<QUESTION>
# Think step by step ..."`: each image follows its label (FIGURE_LABEL)
A7_MEDXPERTQA_MM = ("{question} Think step by step through each of the multiple choice options. You MUST end your "
                    "response with \u2019Final Answer:\u2019 followed by only the letter corresponding to the correct "
                    "answer enclosed in parentheses).")
FIGURE_LABEL = "Figure {letter}"

# ----------------------------------------------------------------------------- Table A7 (images)
_A7_FINAL = ("You may write out your argument before stating your final very short, definitive, and concise answer (if "
             "possible, a single word or the letter corresponding to your answer choice) X in the format \"Final "
             "Answer: X\":")
# MIMIC-CXR and CheXpert: `<IMAGE> + " Is there <CONDITION> in this image? You may write out ..."`, the conditions
# atelectasis, cardiomegaly, consolidation, edema, pleural effusion; CXR14: lung opacity, pneumothorax, and
# "Exception for CXR14: The fracture condition uses the question "Are there any fractures in the image?"".
A7_FINDING_QUESTION = "Is there {finding} in this image?"
A7_FINDINGS = "{question} " + _A7_FINAL
A7_SLAKE = "{question}" + _A7_FINAL + " "  # `<IMAGE> + <QUESTION> + "You may ...": "`: no space after the question
A7_VQA_RAD = ("Given this radiology image, which can be a frontal chest X-ray, a single slice head or abdominal CT or "
              "MR image, provide a very short, definitive, and concise answer (if possible, a single word) to the "
              "following question: {question}")

# ----------------------------------------------------------------------------- MedGemma 1.5 (Tables 7 to 9)
_1_5_FINAL = ("You may write out your argument before stating your final, very short, definitive, and concise answer "
              "{x}(no more than a few words or the letter corresponding to your answer choice if the question is "
              "multiple choice) {x_after}in the format \"Final Answer: X\":")
T7_TEXT_MCQ = "{question}\n" + _1_5_FINAL.format(x="", x_after="X ")  # Table 7 (`\n` in the table: a new line)
T9_VQA = "{question} " + _1_5_FINAL.format(x="X ", x_after="")  # Table 9, SlakeVQA and VQA-Rad alike
# Table 8, the chest X-ray findings: "responce" and the unclosed quote are the table's
T8_FINDINGS = "{question} You MUST end your responce with either \"Final Answer: yes\" or \"Final Answer: no"
THINKING_SYSTEM = "SYSTEM INSTRUCTION: think silently if needed."  # appended to the (empty) system prompt


# ----------------------------------------------------------------------------- reading the answer
_MARKER = re.compile(r"final\s+answer\s*[:\uff1a]", re.IGNORECASE)
_DECORATION = " \t*_`\"'\u2018\u2019\u201c\u201d"


def final_answer(text: str) -> str | None:
    """What follows the last "Final Answer:" (case and spacing aside), on its line, without markdown emphasis or
    quotes around it ("**Final Answer:** (C)" -> "(C)"); None where the text has no final answer. A reply that
    states its answer more than once is read by its last statement: the reasoning before it may quote options."""
    found = list(_MARKER.finditer(text))
    if not found:
        return None
    rest = text[found[-1].end():].lstrip(_DECORATION + "\n")
    line = rest.split("\n", 1)[0].strip(_DECORATION)
    return line


def ends_its_final_answer(text: str) -> bool:
    """Whether a reply has stated its final answer and ended that line: generation can stop there (a model that
    then explains itself spends tokens nobody reads)."""
    found = list(_MARKER.finditer(text))
    if not found:
        return False
    rest = text[found[-1].end():].lstrip(_DECORATION + "\n")
    return "\n" in rest and bool(rest.split("\n", 1)[0].strip(_DECORATION))


def asks_final_answer(task) -> bool:
    """Whether a task's protocol asks for a "Final Answer: X" line (its answers start with it): generation may stop
    once it is given (medtune.inference), a served reply is cut there, and GRPO's format reward checks it."""
    return getattr(task, "answer_prefix", "").startswith(FINAL_ANSWER)


def through_final_answer(text: str, trace_open: str = "", trace_close: str = "") -> str:
    """A whole reply cut where in-process generation stops (medtune.inference.FinalAnswerStop): at the first line
    end by which it has stated its final answer, outside an open thinking trace. A server cannot stop on that
    pattern, so a served reply is cut here, and reads as the in-process one does."""
    end = text.find("\n")
    while end != -1:
        head = text[:end + 1]
        open_trace = trace_open and head.lstrip().startswith(trace_open) and trace_close not in head
        if not open_trace and ends_its_final_answer(head):
            return head
        end = text.find("\n", end + 1)
    return text
