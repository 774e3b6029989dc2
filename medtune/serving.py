"""How to serve what a run exports, as its model card says it: the commands (vLLM with the adapter or the merged
model, `transformers serve`), and the request that asks as training asked, so that a client's answers read as the
evaluation's did. `medtune eval --served` (medtune/served.py) is that client.
"""
from __future__ import annotations

import json
from typing import Any

from medtune.config import Recipe

VLLM_DEFAULT_MAX_LORA_RANK = 16  # vLLM refuses an adapter of a larger rank unless --max-lora-rank says so


def serving_lines(recipe: Recipe, task, base: str | None, where: str, merged: bool, text_only: bool = False) -> str:
    """The card's "Serve" section (markdown). `where`: the repository (or folder) of this export."""
    base_ref = base or "path/to/the/base/model"
    name = where.rstrip("/").split("/")[-1] if "/" in where and not where.startswith("path/") else "adapter"
    budget = recipe.eval.max_new_tokens or task.max_new_tokens
    if merged:
        vllm = f"vllm serve {where}"
        served_as = where
    else:
        rank = f" --max-lora-rank {recipe.lora.r}" if recipe.lora.r > VLLM_DEFAULT_MAX_LORA_RANK else ""
        vllm = f"vllm serve {base_ref} --enable-lora --lora-modules {name}={where}{rank}"
        served_as = name
    lines = ["Any OpenAI-compatible server serves it; ask with greedy decoding (`temperature: 0`) and the prompt "
             "below, as the evaluation above did.", "", "```bash", vllm]
    if merged:
        lines.append(f"transformers serve {where}   # pip install 'transformers[serving]'")
    lines += ["```", ""]
    if not merged:
        lines += ["`transformers serve` serves the merged model (`medtune export RUN --merge`); vLLM serves the "
                  "adapter over its base, under the name given to `--lora-modules`.", ""]
    if recipe.model.prompt_format == "plain":
        lines += ["This model takes a plain prompt, not a chat: ask it through `/v1/completions` with the text "
                  "`<start_of_image> PROMPT`, or in process (see Use)."]
        return "\n".join(lines)
    request = _request(served_as, budget, _asked(task, text_only), text_only)
    lines += [f"The request ({'' if text_only else 'images as data URLs, before the question, as in training; '}"
              f"`max_tokens` is the evaluation's budget, {budget}):", "", "```json",
              json.dumps(request, indent=2, ensure_ascii=False), "```", ""]
    lines.append(_answer_line(task))
    lines.append("")
    lines.append(f"`medtune eval RECIPE --served http://localhost:8000 --served-model {served_as}` asks a server the "
                 "test split and writes the same metrics and files as an in-process evaluation.")
    return "\n".join(lines)


def _asked(task, text_only: bool) -> list[dict[str, Any]] | None:
    """The conversation training asked, where it is the task's own (a multiple-choice prompt and its options); None
    where each row asks its own (free text, reports): a card never shows a row of the data."""
    from medtune.prompts import user_turn
    from medtune.tasks import is_multiple_choice

    if not is_multiple_choice(task) or getattr(task, "conversations", None):  # MedQA's options are the row's
        return None
    return [user_turn(task.prompt(), images=0 if text_only else 1)]


def _request(model: str, max_tokens: int, conversation: list[dict[str, Any]] | None,
             text_only: bool) -> dict[str, Any]:
    """A chat completion request in the OpenAI format, images elided."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}
    if conversation is None:
        asked = {"type": "text", "text": "(the prompt of the prepared rows)"}
        messages = [{"role": "user", "content": [asked] if text_only else [image, asked]}]
    else:
        messages = [{"role": m["role"], "content": [image if item["type"] == "image" else
                                                    {"type": "text", "text": item["text"]} for item in m["content"]
                                                    if item["type"] == "image" or item["text"]]}
                    for m in conversation]
    return {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}


def _answer_line(task) -> str:
    """What the reply looks like and how the evaluation read it."""
    options = getattr(task, "options", None)
    if options:
        prefix = getattr(task, "answer_prefix", "")
        return (f"The reply is the option as trained, e.g. `{prefix}{task.option_line(0)}`; the evaluation reads the "
                "option's letter (or its text) from it.")
    if getattr(task, "answer_prefix", ""):
        return "The reply ends with `Final Answer: ...`; the evaluation reads what follows the last one."
    return "The reply is the answer text as trained; the evaluation scores it as written."
