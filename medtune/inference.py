"""How a model answers questions, batched: greedy generation with left padding (stopping where a reply has stated
its final answer), or option scoring (one forward pass reads the probability of each option's first token). Each
batch is prepared by DataLoader workers while the model runs, images as 8-bit pixels normalised on the model's
device (medtune/pixels.py). `medtune.evaluation` asks, gathers and scores; this module only answers.

A question is a conversation without its answer and the images it shows: a prepared row (its own prompt), or one of
the conversations its task asks of it (`task.conversations(row)`: a benchmark's protocol, one per chest X-ray
finding).
"""
from __future__ import annotations

from typing import Any

from tqdm import tqdm

from medtune.errors import MedtuneError
from medtune.pixels import model_ready, model_ready_inputs
from medtune.prompts import prompt_messages, prompt_text
from medtune.rows import row_images, tokenizer_of
from medtune.tasks._medgemma_prompts import ends_its_final_answer
from medtune.thinking import decode_generation

GENERATION_BATCH = 16  # each row keeps a KV cache that grows with its answer
SCORING_BATCH_RANGE = (16, 64)  # past 64 images (262k vision tokens at 896 px) a batch only adds latency


# ----------------------------------------------------------------------------- the questions of rows
def row_conversations(task, row: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """What evaluation asks of a row: the task's conversations for it (a protocol's prompt, one per finding), or
    the row's own prompt."""
    ask = getattr(task, "conversations", None)
    return ask(row) if ask else [prompt_messages(row["messages"])]


def question_order(task, rows) -> list[tuple[int, int]]:
    """(row, conversation) pairs, the questions of a row together (its image is then encoded once: medtune.model),
    longest prompts first: a batch's prompts are of a length, so little of it is padding. Read from the rows'
    text alone (no image is decoded)."""
    from medtune.rows import without_images

    asked = [row_conversations(task, row) for row in without_images(rows)]
    length = [sum(len(item.get("text") or "") for turn in conversations[0] for item in turn["content"])
              for conversations in asked]
    order = sorted(range(len(asked)), key=lambda i: -length[i])  # stable: equal lengths keep the rows' order
    return [(i, j) for i in order for j in range(len(asked[i]))]


class Questions:
    """The questions of `rows` in `order`, as a map-style dataset for a DataLoader: each item the conversation and
    the row's images. A row's questions follow each other, so its images are decoded once per worker."""

    def __init__(self, task, rows, order: list[tuple[int, int]]):
        self.task, self.rows, self.order = task, rows, order
        self._last: tuple[int, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, j = self.order[k]
        if self._last is None or self._last[0] != i:
            self._last = (i, self.rows[i])
        row = self._last[1]
        return {"messages": row_conversations(self.task, row)[j], "images": row_images(row)}


# ----------------------------------------------------------------------------- batches
class PromptInputs:
    """A DataLoader's collate_fn: questions (prepared rows, or `Questions` items) -> left-padded model inputs. It
    runs in the loader's worker processes, so decoding and tokenising overlap the model's work. `processor` and
    `pixels` come from `medtune.pixels.model_ready_inputs`: images leave here as uint8 at the model's size, and the
    model's device rescales and normalises them (the image processor's float path took ~45 ms an image on one
    core). `answer_prefix`: text the model's turn starts with (option scoring reads the token after it)."""

    def __init__(self, processor, pixels, pixel_dtype, answer_prefix: str = ""):
        self.processor, self.pixels, self.pixel_dtype = processor, pixels, pixel_dtype
        self.answer_prefix = answer_prefix

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [prompt_text(self.processor, r["messages"]) + self.answer_prefix for r in batch]
        kwargs = dict(padding=True, padding_side="left",  # every row's next token follows its last prompt token
                      add_special_tokens=False,  # the prompt text already starts with <bos>
                      return_tensors="pt")
        images = [row_images(r) for r in batch]
        if not any(images):  # text-only rows (a processor refuses an empty image list; a tokenizer takes none)
            return dict(self.processor(text=texts, **kwargs))
        prepare = self.pixels or (lambda image: image.convert("RGB"))
        inputs = self.processor(text=texts, images=[[prepare(image) for image in row] for row in images], **kwargs)
        if self.pixels:
            model_ready(inputs["pixel_values"])
        else:  # the processor's own float values: in the model's dtype (bf16 on a GPU: half to copy)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.pixel_dtype)
        return dict(inputs)


def default_num_workers() -> int:
    """Loader workers when the recipe names none. On a GPU, one per core this process can spare, at most 8:
    they prepare the next batches while the GPU computes. On a CPU none: the model already uses every core,
    and a worker would only take cores from it (benchmarks/eval_modes.md)."""
    import os

    import torch
    from accelerate import PartialState

    if not torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cores // PartialState().num_processes - 1))


def scoring_bytes_per_image(config) -> int:
    """Memory one more image takes in a no-grad scoring forward, from the model's shapes: no KV cache and one
    layer's activations at a time (hidden states, attention projections and the MLP's two wide halves), in the
    vision tower (its patches) and the language model (its image tokens and a prompt), plus the attention
    weights where the tower runs eager attention. ~0.26 GB at MedGemma 4B's shape."""
    vision, text = config.vision_config, config.get_text_config()
    patches = (vision.image_size // vision.patch_size) ** 2
    tokens = config.mm_tokens_per_image + 128
    values = patches * (4 * vision.hidden_size + 2 * vision.intermediate_size)
    values += tokens * (4 * text.hidden_size + 2 * text.intermediate_size)
    if getattr(vision, "_attn_implementation", "sdpa") == "eager":
        values += vision.num_attention_heads * patches ** 2
    return values * 4  # float32 at worst (softmax, norms)


def default_batch_size(model, mode: str, images_per_row: int = 1) -> int:
    """eval.batch_size (questions) when the recipe leaves it unset: 16 images' worth when generating; when scoring
    on a GPU, as many images as fit in half of the memory still free (scoring keeps no cache), within
    SCORING_BATCH_RANGE; at least one question, however many images it holds (a CT series), and 16 of text. The
    same on every rank (the smallest): under ZeRO-3 each forward is collective, so ranks must run as many."""
    import torch
    from accelerate.utils import gather_object

    per_row = max(1, images_per_row)
    if mode != "score" or model.device.type != "cuda" or not hasattr(model.config, "vision_config"):
        return max(1, GENERATION_BATCH // per_row)
    free, _ = torch.cuda.mem_get_info(model.device)
    free += torch.cuda.memory_reserved(model.device) - torch.cuda.memory_allocated(model.device)  # ours to reuse
    low, high = SCORING_BATCH_RANGE
    fits = max(low, min(high, free // 2 // scoring_bytes_per_image(model.config)))
    return max(1, min(gather_object([fits])) // per_row)


def _prompt_batches(model, processor, questions, batch_size: int, desc: str, show_progress: bool,
                    num_workers: int | None = None, answer_prefix: str = ""):
    """Left-padded model inputs for `questions`, a batch at a time, on the model's device, prepared by
    `num_workers` loader processes (0: in this process; None: `default_num_workers()`)."""
    import torch
    from torch.utils.data import DataLoader

    on_cuda = model.device.type == "cuda"
    pixel_dtype = getattr(model, "dtype", torch.float32)
    ready_processor, pixels = model_ready_inputs(model, processor)
    loader = DataLoader(questions, batch_size=batch_size,
                        collate_fn=PromptInputs(ready_processor, pixels, pixel_dtype, answer_prefix),
                        num_workers=default_num_workers() if num_workers is None else num_workers,
                        pin_memory=on_cuda)  # pinned pages copy to the GPU asynchronously
    for inputs in tqdm(loader, desc=desc, unit="batch", disable=not show_progress):
        yield {k: v.to(model.device, non_blocking=on_cuda) for k, v in inputs.items()}  # all tensors


# ----------------------------------------------------------------------------- generation
class FinalAnswerStop:
    """A `transformers` stopping criterion (its `StoppingCriteria` interface): a row stops once its reply has stated
    its final answer and ended that line ("Final Answer: (C)" and a newline). A reasoning protocol's reply may go on
    to explain itself; those tokens are never read. Reads only the tail of each reply, every step. Not
    transformers' `stop_strings`: the end is a pattern (the answer after the marker, then its line's end), and a
    marker inside MedGemma 1.5's open thinking trace is not the reply's."""

    TAIL = 48  # tokens: "Final Answer:" and an answer of a few words

    def __init__(self, tokenizer, prompt_length: int):
        from medtune.thinking import TRACE_CLOSE, TRACE_OPEN

        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        # MedGemma 1.5 may think first: a "Final Answer:" inside its open trace is not the reply's
        ids = [tokenizer.convert_tokens_to_ids(token) for token in (TRACE_OPEN, TRACE_CLOSE)]
        self.trace_ids = ids if None not in ids and tokenizer.unk_token_id not in ids else None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        tails = input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.TAIL):]
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        done = torch.tensor([ends_its_final_answer(text) for text in texts], device=input_ids.device)
        if self.trace_ids is not None:
            done &= ~self._thinking(input_ids[:, self.prompt_length:])
        return done

    def _thinking(self, generated):
        """Per row: whether its last trace opened is still open."""
        import torch

        steps = torch.arange(1, generated.shape[1] + 1, device=generated.device)
        last_open, last_close = (((generated == token) * steps).amax(dim=1) for token in self.trace_ids)
        return last_open > last_close


def generate_answers(model, processor, questions, batch_size: int, max_new_tokens: int, desc: str,
                     show_progress: bool = True, num_workers: int | None = None,
                     stop_after_final_answer: bool = False) -> list[str]:
    """Greedy generation, batched: one reply per question (a prepared row or a `Questions` item)."""
    import torch
    from transformers import StoppingCriteriaList

    model.eval()
    answers: list[str] = []
    tokenizer = tokenizer_of(processor)
    for inputs in _prompt_batches(model, processor, questions, batch_size, desc, show_progress, num_workers):
        prompt_length = inputs["input_ids"].shape[1]
        stopping = StoppingCriteriaList([FinalAnswerStop(tokenizer, prompt_length)] if stop_after_final_answer
                                        else [])
        # no_grad, not inference_mode: ZeRO-3 gathers weights during the forward, and tensors made under
        # inference_mode could never take gradients again (PEFT re-enables the adapter after the baseline)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 stopping_criteria=stopping)
        answers += [decode_generation(tokenizer, ids) for ids in out[:, prompt_length:].tolist()]
    return answers


# ----------------------------------------------------------------------------- option scoring
def scoring_plan(tokenizer, task) -> tuple[str, list[int]]:
    """(the text the model's turn is given, the token each option's answer continues it with): the tokens all the
    options' answers share, tokenised as training tokenised them, then the first token where they part ("Final
    Answer:" then " yes" / " no"; "Final Answer: (" then "A" / "B", or "Final Answer:" then " (A" / " (B" where the
    vocabulary merges the bracket with the letter). MedtuneError where no such token tells the options apart."""
    answers = [tokenizer(getattr(task, "answer_prefix", "") + task.option_line(i), add_special_tokens=False)
               ["input_ids"] for i in range(len(task.options))]
    shared = 0
    while all(len(a) > shared + 1 for a in answers) and len({a[shared] for a in answers}) == 1:
        shared += 1
    ids = [a[shared] if len(a) > shared else None for a in answers]
    opening = tokenizer.decode(answers[0][:shared]) if shared else ""
    if None in ids or len(set(ids)) != len(ids) or \
            tokenizer(opening, add_special_tokens=False)["input_ids"] != answers[0][:shared]:
        raise MedtuneError(f"eval.mode=score: {task.name}'s options do not start with distinct tokens after a "
                           "shared opening; use eval.mode=generate")
    return opening, ids


def score_options(model, processor, questions, option_ids: list[int], batch_size: int, desc: str,
                  show_progress: bool = True, num_workers: int | None = None,
                  answer_prefix: str = "") -> list[list[float]]:
    """One forward pass over each prompt (and `answer_prefix`): the probability of each option's first token,
    renormalised over the options. Never unparsable, gives scores (hence AUROC), and needs no decoding loop."""
    import torch

    model.eval()
    scores = []
    for inputs in _prompt_batches(model, processor, questions, batch_size, desc, show_progress, num_workers,
                                  answer_prefix):
        with torch.no_grad():  # see generate_answers
            # the next-token logits only, and no KV cache: nothing is decoded after this pass
            logits = model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1, :]
        # kept on the device: reading them here would make the host wait for every batch before queueing the next
        scores.append(logits[:, option_ids].float().softmax(dim=-1))
    return torch.cat(scores).tolist() if scores else []
