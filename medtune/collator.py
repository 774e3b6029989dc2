"""Training batches: TRL's vision-language collator with the loss on the answer only.

(A pretrained model without a chat template trains on the plain form instead, medtune/prompts.py: TRL's
prompt-completion path, the loss on the answer and <eos>.)

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
from medtune.prompts import is_plain, plain_completion, prompt_text

IGNORE_INDEX = -100


@dataclass
class AnswerOnlyCollator(DataCollatorForVisionLanguageModeling):
    pixels: Callable | None = None  # medtune.pixels.ModelPixels: images as the model-ready processor takes them

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        # TRL pops "image" from each example: give it shallow copies, the dataset's rows stay intact
        examples = [dict(e) for e in examples]
        if is_plain(self.processor):  # a pt model: TRL's prompt-completion path, the loss on the completion
            examples = [{"prompt": prompt_text(self.processor, e["messages"]),
                         "completion": plain_completion(self.processor, e["messages"]), "image": e["image"]}
                        for e in examples]
        if self.pixels is not None:
            for example in examples:
                example["image"] = self.pixels(example["image"])
        try:
            batch = super().torch_call(examples)
        except ValueError as e:
            # the Gemma 3 processor refuses a truncation that cuts image tokens (it would break the forward)
            if "image` token count" in str(e):
                raise MedtuneError("training.max_length cuts into the image tokens: raise it or leave it "
                                   "unset") from None
            raise
        if self.pixels is not None:
            model_ready(batch["pixel_values"])
        tokenizer = self.processor.tokenizer
        end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        labels, ids = batch["labels"], batch["input_ids"]
        after_end_of_turn = (ids[:, :-1] == end_of_turn) & (labels[:, 1:] != IGNORE_INDEX)
        labels[:, 1:][after_end_of_turn] = IGNORE_INDEX
        return batch


def build_collator(processor, max_length: int | None = None, pixels: Callable | None = None) -> AnswerOnlyCollator:
    """`processor` and `pixels` as `medtune.pixels.model_ready_inputs` gives them (or the plain processor alone:
    images go through its image processor)."""
    if is_plain(processor):
        return AnswerOnlyCollator(processor=processor, max_length=max_length, completion_only_loss=True,
                                  pixels=pixels)
    try:
        template = get_training_chat_template(processor)  # None: the template already has the markers
    except ValueError as e:
        raise MedtuneError(f"the model's chat template cannot be trained on the answer only: {e}") from None
    return AnswerOnlyCollator(processor=processor, max_length=max_length, assistant_only_loss=True,
                              chat_template=template, pixels=pixels)
