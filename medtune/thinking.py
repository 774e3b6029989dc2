"""Thinking traces: MedGemma 1.5 may answer with `<unused94>thought\n...<unused95>` before the answer.

The two markers are ids 100 and 101 of MedGemma 1.5's tokenizer (`<unused94>`, `<unused95>`); the closing one is
sometimes never emitted, and the answer is then lost in the trace. Evaluation keeps the raw text (trace and
all) in the predictions file, parses only what follows a closed trace, and counts the traces that never
closed: their answers are unparsable (a classification) or empty (free text), never guessed from the trace.
Option scoring reads the first token of each option after the prompt, which a trace never reaches, so it is
unaffected. Training targets are the dataset's answers, which carry no trace.
"""
from __future__ import annotations

TRACE_OPEN, TRACE_CLOSE = "<unused94>", "<unused95>"
NO_TRACE, CLOSED, UNCLOSED = "none", "closed", "unclosed"


def decode_generation(tokenizer, ids: list[int]) -> str:
    """The generated text as `batch_decode(..., skip_special_tokens=True)` gives it, but with the trace
    markers kept where the tokenizer has them: a tokenizer that counts them as special tokens would drop
    them, and the trace would then read as the answer."""
    markers = {tokenizer.convert_tokens_to_ids(token): token for token in (TRACE_OPEN, TRACE_CLOSE)}
    markers.pop(tokenizer.unk_token_id, None)  # a tokenizer without them maps both to <unk>
    markers.pop(None, None)
    if not markers.keys() & set(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)
    pieces, start = [], 0
    for position, token in enumerate(ids):
        if token in markers:
            pieces += [tokenizer.decode(ids[start:position], skip_special_tokens=True), markers[token]]
            start = position + 1
    pieces.append(tokenizer.decode(ids[start:], skip_special_tokens=True))
    return "".join(pieces)


def split_trace(text: str) -> tuple[str, str]:
    """(the answer to parse, NO_TRACE | CLOSED | UNCLOSED). A trace is recognised only where the text opens
    with it (whitespace aside); an unclosed trace leaves no answer."""
    stripped = text.lstrip()
    if not stripped.startswith(TRACE_OPEN):
        return text, NO_TRACE
    if TRACE_CLOSE not in stripped:
        return "", UNCLOSED
    return stripped.split(TRACE_CLOSE, 1)[1], CLOSED


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


TRACE_METRICS = ("thinking_traces", "unclosed_traces")  # rows of the comparison table, where a model traced


def trace_counts(records: list[dict]) -> dict[str, int]:
    """Metrics for evaluation records (their `trace`: one, or one per question a row was asked), when any answer
    carried a trace: how many did, how many never closed."""
    states = [state for record in records for state in _as_list(record.get("trace", NO_TRACE))]
    if all(state == NO_TRACE for state in states):
        return {}
    return dict(zip(TRACE_METRICS, (sum(s != NO_TRACE for s in states), sum(s == UNCLOSED for s in states))))
