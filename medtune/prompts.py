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


def single_questions(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A conversation of several questions about the images of its first turn (user, model, user, model, ...) as
    one conversation per question, each with its answer and those images before it (a system turn kept in each)."""
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    images = [item for item in turns[0]["content"] if item["type"] == "image"]
    questions = []
    for user, answer in zip(turns[::2], turns[1::2]):
        asked = [item for item in user["content"] if item["type"] != "image"]
        questions.append([*system, {"role": "user", "content": [*images, *asked]}, answer])
    return questions


def user_turn(text: str, images: int = 0, image_labels: list[str] | None = None) -> dict[str, Any]:
    """A user turn: its images, then the text. `image_labels`: a text before each image ("Figure A"), as prompts
    that name their figures lay them out."""
    content: list[dict[str, Any]] = []
    for i in range(images):
        if image_labels:
            content.append({"type": "text", "text": image_labels[i]})
        content.append({"type": "image", "text": None})  # the prepared rows' form (data_prep._common.conversation)
    return {"role": "user", "content": [*content, {"type": "text", "text": text}]}


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
