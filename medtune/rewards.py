"""GRPO's rewards, from the task: a completion earns the task's own per-example metric, computed by the code that
evaluates (`task.parse_answer`, then `task.compute_metrics`: the option parsed and compared for classification and
MedQA, SQuAD's token F1 for VQA, RadGraph F1 or ROUGE-L for reports), plus a small format reward where the protocol
has a form to keep (an answer that parses as an option, the "Final Answer:" line it asks for), plus any reward
functions of the user's own (`grpo.reward_funcs`). Nothing here re-implements a metric.

What a reward reads is what evaluation reads: the completion decoded from its token ids with MedGemma 1.5's thinking
markers kept (TRL decodes completions with special tokens skipped, which would drop `<unused94>`/`<unused95>` and
leave the trace to be read as the answer), then the answer after a closed trace. A trace that never closed (cut by
max_completion_length) earns nothing, in either reward.

The known hacks earn nothing: an answer that names several options (one of which is then right), and an answer that
repeats the question (whose words a token-overlap metric would reward).

Callable as TRL calls a reward function: `reward(prompts=..., completions=..., completion_ids=..., **columns)`, the
dataset's columns (label, answer, options, ...) as lists; each returns one float per completion. Light to import
(no torch): the recipe checks name the reward metric before anything loads.
"""
from __future__ import annotations

import importlib
import re
from typing import Any

from medtune.tasks import is_multiple_choice
from medtune.tasks._medgemma_prompts import asks_final_answer, final_answer
from medtune.thinking import UNCLOSED, decode_generation, split_trace

# the columns TRL adds to a reward function's keyword arguments beside the dataset's
_TRL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")
# where an answer may list several options: lines, commas, semicolons, slashes, "or", "and"
_SEGMENTS = re.compile(r"\n|[,;/]|\s+(?:or|and)\s+", re.IGNORECASE)
_MIN_QUESTION_WORDS = 3  # a shorter question ("Size?") is no text to copy


# ----------------------------------------------------------------------------- which metric, which format
def reward_metric(task, chosen: str | None = None) -> str:
    """The per-example score a completion is rewarded with: `chosen` (grpo.reward_metric), else the task's
    `reward_metric`, else the per-example score its headline metric is the mean of. ValueError naming the
    choices where the task saves no such score."""
    metric = chosen or getattr(task, "reward_metric", None) or task.mean_of.get(task.table_metrics[0])
    if metric not in task.example_metrics:
        raise ValueError(f"{metric!r} is not a per-example score of {task.name}; it has "
                         f"{', '.join(task.example_metrics)}")
    return metric


def has_format(task) -> bool:
    """Whether the task's answers have a form a format reward can check: an option to parse, or the "Final
    Answer:" line the protocol asks for. A free answer (a report, medtune's VQA protocol) has none."""
    return is_multiple_choice(task) or asks_final_answer(task)


# ----------------------------------------------------------------------------- reading a completion
def completion_text(tokenizer, ids: list[int] | None, completion: Any) -> str:
    """The completion as evaluation decodes it: from its ids with the trace markers kept, where there are ids and
    a tokenizer; else TRL's decoded text (a string, or a conversational completion's assistant turn)."""
    if tokenizer is not None and ids is not None:
        return decode_generation(tokenizer, list(ids))
    if isinstance(completion, list):  # [{"role": "assistant", "content": ...}]
        content = completion[-1]["content"]
        return content if isinstance(content, str) else "".join(p.get("text") or "" for p in content)
    return str(completion)


def prompt_question(prompt: Any) -> str:
    """The question a prompt asks: the first line of its last user turn's text (a multiple-choice prompt's options
    follow it on their own lines)."""
    if isinstance(prompt, str):
        text = prompt
    else:
        users = [m for m in prompt if m.get("role") == "user"] or [{"content": ""}]
        content = users[-1]["content"]
        text = content if isinstance(content, str) else "\n".join(p.get("text") or "" for p in content
                                                                   if p.get("type") == "text")
    return next((line for line in text.splitlines() if line.strip()), "")


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def names_several_options(task, answer: str) -> bool:
    """Whether the answer names more than one option (`A: adipose, B: background`, `adipose or debris`): each part
    of it read as evaluation reads an answer. Where the protocol asks for a final answer, only that is read (the
    argument before it may weigh several options)."""
    if not is_multiple_choice(task):
        return False
    stated = final_answer(answer)
    text = stated if stated is not None else answer
    clean = " ".join(text.strip().lower().split())
    if any(clean in (task.option_line(i).lower(), task.options[i].lower()) for i in range(len(task.options))):
        return False  # exactly one option, whose own text may hold a comma or an "and"
    named = {task.parse_answer(part) for part in _SEGMENTS.split(text) if part.strip()}
    named.discard(-1)  # UNPARSABLE
    return len(named) > 1


def repeats_question(answer: str, question: str) -> bool:
    """Whether the answer holds the question's text (case, spacing and punctuation aside)."""
    asked = _normal(question)
    return len(asked.split()) >= _MIN_QUESTION_WORDS and asked in _normal(answer)


def hack(task, answer: str, question: str) -> str | None:
    """Why an answer earns nothing whatever its metric says, or None."""
    if names_several_options(task, answer):
        return "several_options"
    if repeats_question(answer, question):
        return "repeats_question"
    return None


class _Completions:
    """A batch of completions read once: each one's text, answer (after a closed trace), trace state and hack."""

    def __init__(self, task, tokenizer, prompts, completions, completion_ids):
        ids = completion_ids if completion_ids is not None else [None] * len(completions)
        self.texts = [completion_text(tokenizer, i, c) for i, c in zip(ids, completions)]
        self.answers, self.traces = map(list, zip(*(split_trace(t) for t in self.texts))) if self.texts else ([], [])
        self.hacks = [hack(task, a, prompt_question(p)) for a, p in zip(self.answers, prompts)]


def _rows(columns: dict[str, list], n: int) -> list[dict[str, Any]]:
    data = {k: v for k, v in columns.items() if k not in _TRL_KWARGS and isinstance(v, list) and len(v) == n}
    return [{k: v[i] for k, v in data.items()} for i in range(n)]


# ----------------------------------------------------------------------------- the rewards
class TaskMetricReward:
    """The task's per-example metric of each completion, 0 for a hack or a trace that never closed. Logs, per
    batch, the share of completions that were hacks, unparsable (no option read) or cut inside their trace."""

    def __init__(self, task, tokenizer, metric: str | None = None):
        self.task, self.tokenizer = task, tokenizer
        self.metric = reward_metric(task, metric)
        self.__name__ = self.metric  # TRL logs it as rewards/<name>/mean
        self._said_unavailable = False

    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float]:
        read = _Completions(self.task, self.tokenizer, prompts, completions, completion_ids)
        rows = _rows(columns, len(read.answers))
        references = [self.task.reference(row) for row in rows]
        predictions = [self.task.parse_answer(a) for a in read.answers]
        metrics = self.task.compute_metrics(references, predictions)
        values = [self._value(example, metrics) for example in metrics["per_example"]]
        rewards = [0.0 if h or t == UNCLOSED else v for v, h, t in zip(values, read.hacks, read.traces)]
        log = columns.get("log_metric")
        if log is not None and rewards:
            n = len(rewards)
            log("completions/several_options", read.hacks.count("several_options") / n)
            log("completions/repeats_question", read.hacks.count("repeats_question") / n)
            log("completions/unclosed_trace", read.traces.count(UNCLOSED) / n)
            if is_multiple_choice(self.task):
                log("completions/unparsable", sum(p == -1 for p in predictions) / n)
        return rewards

    def _value(self, example: dict[str, Any], metrics: dict[str, Any]) -> float:
        """The example's score on the reward metric; where the metric is unavailable (RadGraph without its model),
        the task's next per-example score, said once."""
        if self.metric in example:
            return float(example[self.metric])
        fallback = next((m for m in self.task.example_metrics if m in example), None)
        if not self._said_unavailable:
            self._said_unavailable = True
            why = metrics.get(f"{self.metric}_unavailable", "not computed")
            print(f"medtune: GRPO reward {self.metric} unavailable ({why}); rewarding {fallback} instead")
        return float(example.get(fallback, 0.0)) if fallback else 0.0


class FormatReward:
    """1 for a completion in the protocol's form, else 0: a trace, if opened, closed; the "Final Answer:" line where
    the protocol asks for it; an answer that parses as one option (multiple choice) or is not empty; no hack."""

    __name__ = "format"

    def __init__(self, task, tokenizer):
        self.task, self.tokenizer = task, tokenizer

    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float]:
        read = _Completions(self.task, self.tokenizer, prompts, completions, completion_ids)
        return [float(self.well_formed(answer, trace, why)) for answer, trace, why
                in zip(read.answers, read.traces, read.hacks)]

    def well_formed(self, answer: str, trace: str, why: str | None) -> bool:
        if trace == UNCLOSED or why is not None or not answer.strip():
            return False
        if asks_final_answer(self.task) and not (final_answer(answer) or "").strip():
            return False
        return not is_multiple_choice(self.task) or self.task.parse_answer(answer) != -1


def user_reward(name: str):
    """`module:function` from the recipe (grpo.reward_funcs), imported; a one-line RecipeError where it is not
    there (the recipe check found the module, not what is in it)."""
    from medtune.errors import RecipeError

    module, _, function = name.partition(":")
    try:
        found = getattr(importlib.import_module(module), function, None)
    except Exception as e:
        raise RecipeError("grpo.reward_funcs", f"{name}: importing {module} failed ({type(e).__name__}: {e})") \
            from None
    if not callable(found):
        raise RecipeError("grpo.reward_funcs", f"{name}: {module} has no function {function!r}")
    return found


def describe_rewards(task, settings: dict[str, Any], quote: str = "") -> str:
    """The reward as a line: "1 x task_metric + 0.2 x format + ...", each function's name in `quote`s."""
    funcs, weights = build_rewards(task, None, settings)
    return " + ".join(f"{w:g} x {quote}{getattr(f, '__name__', type(f).__name__)}{quote}"
                      for f, w in zip(funcs, weights))


def build_rewards(task, tokenizer, settings: dict[str, Any]) -> tuple[list, list[float]]:
    """(reward functions, their weights) for TRL's GRPOTrainer from the recipe's grpo section: the task's metric,
    the format reward where the protocol has a format and its weight is not 0, and the user's own."""
    funcs, weights = [TaskMetricReward(task, tokenizer, settings.get("reward_metric"))], [settings["metric_weight"]]
    if has_format(task) and settings["format_weight"]:
        funcs.append(FormatReward(task, tokenizer))
        weights.append(settings["format_weight"])
    own = settings.get("reward_funcs") or []
    for name, weight in (own.items() if isinstance(own, dict) else ((n, 1.0) for n in own)):
        funcs.append(user_reward(name))
        weights.append(float(weight))
    return funcs, [float(w) for w in weights]
