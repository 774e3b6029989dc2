"""`medtune inspect RECIPE`: one collated training example, with the tokens that carry loss marked.

Named inspect_batch (not inspect) so that it can never shadow the standard library's `inspect`.
"""
from __future__ import annotations

from medtune.config import Recipe
from medtune.rows import tokenizer_of

LOSS_OPEN, LOSS_CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧ around the tokens that carry loss


def render_example(processor, input_ids: list[int], labels: list[int]) -> str:
    """The text of one example, runs of image tokens folded, loss-carrying tokens between ⟦ ⟧."""
    tokenizer = tokenizer_of(processor)
    image_id = getattr(tokenizer, "image_token_id", None)  # None: a text-only model's tokenizer may lack it
    pieces, i = [], 0
    while i < len(input_ids):
        if input_ids[i] == image_id:
            j = i
            while j < len(input_ids) and input_ids[j] == image_id:
                j += 1
            pieces.append(f"<image_soft_token>\u00d7{j - i}")
            i = j
            continue
        has_loss = labels[i] != -100
        j = i
        while j < len(input_ids) and (labels[j] != -100) == has_loss and input_ids[j] != image_id:
            j += 1
        text = tokenizer.decode(input_ids[i:j], skip_special_tokens=False)
        pieces.append(f"{LOSS_OPEN}{text}{LOSS_CLOSE}" if has_loss else text)
        i = j
    return "".join(pieces)


def inspect_example(recipe: Recipe, index: int = 0) -> str:
    from medtune.collator import build_collator
    from medtune.data import load_split
    from medtune.model import load_processor

    processor = load_processor(recipe)
    row = load_split(recipe, "train")[index]
    batch = build_collator(processor, recipe.training.get("max_length"))([row])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tokenizer = tokenizer_of(processor)
    loss_tokens = [(t, tokenizer.convert_ids_to_tokens(t)) for t, label in zip(ids, labels) if label != -100]
    n_image = sum(t == getattr(tokenizer, "image_token_id", None) for t in ids)  # per image: mm_tokens_per_image
    n_images = sum(t == getattr(tokenizer, "boi_token_id", None) for t in ids)
    per_image = f" ({n_images} image(s) x {n_image // n_images})" if n_images else ""
    lines = [
        f"example {index} of the train split ({row['id']}), as the model is trained on it; "
        f"{LOSS_OPEN}...{LOSS_CLOSE} marks the tokens that carry loss:",
        "",
        render_example(processor, ids, labels),
        "",
        f"tokens: {len(ids)} | image tokens: {n_image}{per_image} | tokens with loss: {len(loss_tokens)} | "
        f"without loss: {len(ids) - len(loss_tokens)}",
        "loss tokens: " + " ".join(f"{tok}({tid})" for tid, tok in loss_tokens),
    ]
    return "\n".join(lines)
