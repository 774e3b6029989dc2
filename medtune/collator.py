"""Training batches: TRL's vision-language collator with the loss on the answer only.

(A pretrained model without a chat template trains on the plain form instead, medtune/prompts.py: TRL's
prompt-completion path, the loss on the answer and <eos>.)

A row brings none, one or several images (medtune/rows.py); each becomes its `<start_of_image>` and image tokens
where the conversation places it. A text-only model's tokenizer renders the same training template itself:
TRL's collator needs a processor.

TRL renders each conversation with the Gemma 3 *training* chat template (its `{% generation %}` markers
give the assistant mask), so the prompt, the image tokens, begin/end-of-image and padding carry no loss.
The template's generation block also covers the newline after `<end_of_turn>`; the model never generates
past `<end_of_turn>`, so we drop that newline from the loss too: loss = answer tokens + `<end_of_turn>`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from trl.chat_template_utils import get_training_chat_template
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from medtune.errors import MedtuneError
from medtune.pixels import model_ready
from medtune.prompts import is_plain, plain_completion, prompt_text, single_questions
from medtune.rows import row_images, takes_images, tokenizer_of

IGNORE_INDEX = -100


@dataclass
class AnswerOnlyCollator(DataCollatorForVisionLanguageModeling):
    pixels: Callable | None = None  # medtune.pixels.ModelPixels: images as the model-ready processor takes them
    # a row's user turns are separate questions about its image (chest X-ray findings): each is rendered alone,
    # then the questions of a row are packed into one sequence that shares the image (medtune/shared_prefix.py)
    independent_questions: bool = False

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [self._example(e) for e in examples]  # new dicts: TRL edits them, the dataset's rows stay intact
        groups = None
        if self.independent_questions:
            examples, groups = self._questions_alone(examples)
        if not takes_images(self.processor):
            batch = self._collate_text_only(examples)
        else:
            try:
                batch = super().torch_call(examples)
            except ValueError as e:
                # the Gemma 3 processor refuses a truncation that cuts image tokens (it would break the forward)
                if "image` token count" in str(e):
                    raise MedtuneError("training.max_length cuts into the image tokens: raise it or leave it "
                                       "unset") from None
                raise
        if self.pixels is not None and "pixel_values" in batch:
            model_ready(batch["pixel_values"])
        end_of_turn = tokenizer_of(self.processor).convert_tokens_to_ids("<end_of_turn>")
        labels, ids = batch["labels"], batch["input_ids"]
        after_end_of_turn = (ids[:, :-1] == end_of_turn) & (labels[:, 1:] != IGNORE_INDEX)
        labels[:, 1:][after_end_of_turn] = IGNORE_INDEX
        if groups is not None:
            from medtune.shared_prefix import pack_questions

            batch = pack_questions(batch, groups, [len(e["images"]) for e in examples],
                                   tokenizer_of(self.processor).pad_token_id)
        return batch

    @staticmethod
    def _questions_alone(examples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[int]]]:
        """Each example's questions as examples of their own (its images with each), and which belong together."""
        alone, groups = [], []
        for example in examples:
            questions = single_questions(example["messages"])
            groups.append(list(range(len(alone), len(alone) + len(questions))))
            alone += [{"messages": messages, "images": example["images"]} for messages in questions]
        return alone, groups

    def _example(self, row: dict[str, Any]) -> dict[str, Any]:
        """A row as TRL's collator takes it: the conversation (or, for a pt model, prompt and completion) and the
        list of its images, model-ready."""
        images = [self.pixels(image) if self.pixels is not None else image for image in row_images(row)]
        if is_plain(self.processor):  # a pt model: TRL's prompt-completion path, the loss on the completion
            return {"prompt": prompt_text(self.processor, row["messages"]),
                    "completion": plain_completion(self.processor, row["messages"]), "images": images}
        return {"messages": row["messages"], "images": images}

    def _collate_text_only(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """What TRL's collator does for a conversation, with a tokenizer: the training template's assistant mask
        gives the labels."""
        batch = self.processor.apply_chat_template(
            [e["messages"] for e in examples], chat_template=self.chat_template, tokenize=True, return_dict=True,
            return_tensors="pt", return_assistant_tokens_mask=True, padding=True,
            truncation=self.max_length is not None, max_length=self.max_length,
            tokenizer_kwargs={"padding_side": "right"})
        labels = batch["input_ids"].clone()
        labels[(batch["attention_mask"] == 0) | (batch.pop("assistant_masks") == 0)] = IGNORE_INDEX
        return {**batch, "labels": labels}


def build_collator(processor, max_length: int | None = None, pixels: Callable | None = None,
                   independent_questions: bool = False) -> AnswerOnlyCollator:
    """`processor` and `pixels` as `medtune.pixels.model_ready_inputs` gives them (or the plain processor alone:
    images go through its image processor); `independent_questions` as the task says (its rows' user turns are
    questions asked alone)."""
    if is_plain(processor):
        if not takes_images(processor):
            raise MedtuneError("model.prompt_format: a text-only model trains in its chat form; remove the key "
                               "(or set it to auto)")
        return AnswerOnlyCollator(processor=processor, max_length=max_length, completion_only_loss=True,
                                  pixels=pixels)
    try:
        template = get_training_chat_template(processor)  # None: the template already has the markers
    except ValueError as e:
        raise MedtuneError(f"the model's chat template cannot be trained on the answer only: {e}") from None
    return AnswerOnlyCollator(processor=processor, max_length=max_length, assistant_only_loss=True,
                              chat_template=template, pixels=pixels, independent_questions=independent_questions)
