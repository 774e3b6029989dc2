"""Several questions about one image, trained in one sequence that encodes the image once.

A chest X-ray's findings are five yes/no questions about one film (medtune/tasks/_findings.py). Trained as five
rows, the vision tower encodes the film five times and the language model reads its 256 image tokens five times.
Trained as one multi-turn conversation, the later questions would see the earlier answers, which evaluation never
shows (it asks each question alone): the model would learn from context it will not have.

Here each question is a branch of one sequence: the prompt's common start (the turn's opening and the image's
tokens, the longest token prefix the questions share) once, then each question with its answer. A branch attends
to the shared start and to itself, never to another branch, and its positions continue from the shared start as
if it were alone; the image's tokens attend to each other both ways, as Gemma 3 has them. Each answer token thus
sees exactly what it would see in its own row (tests/test_findings.py compares the two), at the cost of one image
and one image-token prefix: 256 + 5 x ~60 tokens instead of 5 x ~316 at MedGemma 4B's shape.

Two halves: `pack_questions` (in the collator) turns the separately rendered questions of each row into one packed
row with `branch_ids` and `position_ids`; `install_branch_masks` (on the model, once) turns `branch_ids` into the
attention masks of each layer type before the language model runs. Models without branches run as before.
"""
from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100
SHARED = -1  # branch id of the shared start


def pack_questions(batch: dict[str, Any], groups: list[list[int]], images_per_question: list[int],
                   pad_token_id: int) -> dict[str, Any]:
    """Each group of the collated batch's rows (the questions of one image, each rendered alone, right-padded) as
    one packed row: the group's longest common token prefix before any label, then each question's rest. Keeps
    the images of each group's first question only (its questions show the same images)."""
    import torch

    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    token_types = batch.get("token_type_ids")
    rows: list[dict[str, torch.Tensor]] = []
    for group in groups:
        lengths = [int(mask[i].sum()) for i in group]
        shared = _shared_length([ids[i, :n] for i, n in zip(group, lengths)],
                                [labels[i, :n] for i, n in zip(group, lengths)])
        pieces = [(group[0], 0, shared, SHARED, 0)] + [(i, shared, n, k, shared)
                                                       for k, (i, n) in enumerate(zip(group, lengths))]
        rows.append({
            "input_ids": torch.cat([ids[i, a:b] for i, a, b, _, _ in pieces]),
            "labels": torch.cat([labels[i, a:b] for i, a, b, _, _ in pieces]),
            "position_ids": torch.cat([torch.arange(start, start + b - a) for _, a, b, _, start in pieces]),
            "branch_ids": torch.cat([torch.full((b - a,), k) for _, a, b, k, _ in pieces]),
            **({"token_type_ids": torch.cat([token_types[i, a:b] for i, a, b, _, _ in pieces])}
               if token_types is not None else {}),
        })
    width = max(len(row["input_ids"]) for row in rows)
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "position_ids": 0, "branch_ids": SHARED,
            "token_type_ids": 0}
    packed = {key: torch.stack([torch.nn.functional.pad(row[key], (0, width - len(row[key])), value=fill[key])
                                for row in rows]) for key in rows[0]}
    packed["attention_mask"] = torch.stack([torch.nn.functional.pad(torch.ones(len(row["input_ids"]), dtype=mask.dtype),
                                                                    (0, width - len(row["input_ids"])))
                                            for row in rows])
    if "pixel_values" in batch:
        starts = [sum(images_per_question[:i]) for i in range(len(images_per_question))]
        keep = [starts[g[0]] + j for g in groups for j in range(images_per_question[g[0]])]
        packed["pixel_values"] = batch["pixel_values"][keep]
    return packed


def _shared_length(sequences, labels) -> int:
    """The length of the longest common prefix of `sequences` that holds no label (no answer is shared)."""
    import torch

    shortest = min(len(s) for s in sequences)
    same = torch.stack([s[:shortest] == sequences[0][:shortest] for s in sequences]).all(dim=0)
    unlabelled = torch.stack([lab[:shortest] == IGNORE_INDEX for lab in labels]).all(dim=0)
    keep = (same & unlabelled).int().cumprod(dim=0)
    return int(keep.sum())


# ----------------------------------------------------------------------------- the model's side
def branch_mask(branch_ids, position_ids, attention_mask, token_type_ids, sliding_window: int | None):
    """(batch, 1, query, key) booleans, True where a query may attend to a key: a real key, in the shared start or
    the query's own branch, before the query (or in the query's image, both ways), and with a sliding window
    within `sliding_window` positions (a branch's positions are those it would have alone)."""
    import torch

    length = branch_ids.shape[1]
    q, kv = torch.arange(length, device=branch_ids.device)[:, None], torch.arange(length, device=branch_ids.device)
    causal = (kv <= q)[None]
    same_branch = (branch_ids[:, None, :] == SHARED) | (branch_ids[:, None, :] == branch_ids[:, :, None])
    allowed = causal
    if token_type_ids is not None:  # an image's tokens see each other both ways (Gemma 3's image blocks)
        block = _image_blocks(token_type_ids)
        allowed = allowed | ((block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0))
    allowed = allowed & same_branch & attention_mask.bool()[:, None, :]
    if sliding_window is not None:
        allowed = allowed & (position_ids[:, :, None] - position_ids[:, None, :] < sliding_window)
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=branch_ids.device)[None]  # padding: never empty
    return allowed[:, None]


def _image_blocks(token_type_ids):
    """Per token, the index of the image whose tokens it is among (-1 for text), as Gemma 3 numbers them."""
    import torch

    is_image = token_type_ids == 1
    starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:, :-1]
    return torch.where(is_image, starts.int().cumsum(dim=1) - 1, -1)


def install_branch_masks(language_model_owner) -> None:
    """On Gemma 3's multimodal model (`Gemma3Model`): where the inputs carry `branch_ids` (packed questions), the
    attention masks of each layer type are built from them and handed over prepared (the model's documented
    `attention_mask` mapping), in the form its attention implementation reads (eager: additive floats; SDPA:
    booleans). Without `branch_ids` nothing changes."""
    import torch

    if getattr(language_model_owner, "medtune_branch_masks", False):
        return
    text_config = language_model_owner.config.get_text_config()

    def hook(module, args, kwargs):
        branch_ids = kwargs.pop("branch_ids", None)
        if branch_ids is None:
            return None
        dtype = module.get_input_embeddings().weight.dtype
        masks = {}
        for layer_type in set(text_config.layer_types):
            window = text_config.sliding_window if layer_type == "sliding_attention" else None
            allowed = branch_mask(branch_ids, kwargs["position_ids"], kwargs["attention_mask"],
                                  kwargs.get("token_type_ids"), window)
            if text_config._attn_implementation == "eager":
                allowed = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                    ~allowed, torch.finfo(dtype).min)
            masks[layer_type] = allowed
        kwargs["attention_mask"] = masks
        return args, kwargs

    language_model_owner.register_forward_pre_hook(hook, with_kwargs=True)
    language_model_owner.medtune_branch_masks = True
