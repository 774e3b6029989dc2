"""How a conversation becomes the model's text: the chat template of the instruction-tuned models, or the plain
form of the pretrained (pt) ones, which have no turns.

The plain form is the pt model card's: `<bos><start_of_image> {prompt}` (google/medgemma-4b-pt prompts
`<start_of_image> findings:`), then a newline, the answer and `<eos>`; training puts the loss on the answer and
`<eos>` only, as it does on the answer and `<end_of_turn>` with the chat template. A processor without a chat
template is plain; `model.prompt_format: plain` removes the template of one that has it (medtune.model).
"""
from __future__ import annotations

from typing import Any

from medtune.rows import tokenizer_of


def is_plain(processor) -> bool:
    return not getattr(processor, "chat_template", None)


def prompt_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation without its answer: what the model is given."""
    return [m for m in messages if m["role"] != "assistant"]


def prompt_text(processor, messages: list[dict[str, Any]]) -> str:
    """The text the model continues (its image placeholders expanded later by the processor)."""
    given = prompt_messages(messages)
    if not is_plain(processor):
        return processor.apply_chat_template(given, add_generation_prompt=True, tokenize=False)
    images = "".join(processor.boi_token for m in given for item in m["content"] if item["type"] == "image")
    return f"{tokenizer_of(processor).bos_token}{images} {_texts(given)}\n"


def plain_completion(processor, messages: list[dict[str, Any]]) -> str:
    """The answer as the plain form trains on it: the text, then `<eos>` (where generation must stop)."""
    return _texts([m for m in messages if m["role"] == "assistant"]) + tokenizer_of(processor).eos_token


def _texts(messages: list[dict[str, Any]]) -> str:
    return "\n".join(item["text"].strip() for m in messages for item in m["content"]
                     if item["type"] == "text" and item["text"])
