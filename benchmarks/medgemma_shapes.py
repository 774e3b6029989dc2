"""Random-weight Gemma 3 checkpoints at MedGemma 4B's shapes, for measuring speed without a download.

- `real`: MedGemma 4B IT's exact architecture (language model: hidden 2560, 34 layers, 8 heads, 4 KV heads,
  head_dim 256, MLP 10240, vocabulary 262,208, sliding window 1024 with one global layer in six; vision:
  SigLIP 896 px, patch 14, hidden 1152, 27 layers, pooled to 256 image tokens per image). For a GPU.
- `scaled`: what a CPU can train in minutes while keeping what dominates there: the real 262,208-token
  vocabulary (so embeddings and the LM head cost what they really cost) and 256 image tokens per image;
  4 narrow decoder layers, SigLIP at 224 px with 2 layers.
- `geometry`: MedGemma's image geometry (896 px, patch 14, 4,096 patches pooled to 256 image tokens) on a
  model too small to cost much (narrow, two decoder layers, the tokenizer's vocabulary, a tower of patch
  embedding and no transformer layer): what evaluation's input pipeline feeds MedGemma, with the model out of
  the way.

The tokenizer is medtune's tiny one (its ids are a subset of the 262k rows); the processor feeds the
vision tower its native resolution. Random weights are fine for speed and memory; the projector is
randomised (Gemma 3 initialises it to zeros, which would make images irrelevant).
"""
from __future__ import annotations

from pathlib import Path

SHAPES = {
    "real": {"text": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                          num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
                          rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                          rope_scaling={"rope_type": "linear", "factor": 8.0}),
             "vision": dict(image_size=896, patch_size=14, hidden_size=1152, intermediate_size=4304,
                            num_hidden_layers=27, num_attention_heads=16)},
    "scaled": {"text": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64, sliding_window=1024),
               "vision": dict(image_size=224, patch_size=14, hidden_size=128, intermediate_size=512,
                              num_hidden_layers=2, num_attention_heads=2)},
    "geometry": {"text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=512),
                 "vision": dict(image_size=896, patch_size=14, hidden_size=8, intermediate_size=16,
                                num_hidden_layers=0, num_attention_heads=1),
                 "vocab_size": None},  # the tokenizer's own (the real one's 262k-row LM head costs what it costs)
}
VOCAB, IMAGE_TOKENS = 262_208, 256


def build_processor(shape: str):
    from transformers import Gemma3Processor

    from medtune.tiny import GEMMA3_CHAT_TEMPLATE, build_tiny_processor

    try:
        from transformers import Gemma3ImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - transformers 4
        from transformers import Gemma3ImageProcessor as ImageProcessor

    size = SHAPES[shape]["vision"]["image_size"]
    return Gemma3Processor(
        image_processor=ImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                       image_std=[0.5] * 3),
        tokenizer=build_tiny_processor().tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=IMAGE_TOKENS)


def build_model(shape: str, tokenizer, dtype=None):
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    vocab = SHAPES[shape].get("vocab_size", VOCAB) or ((len(tokenizer) + 7) // 8) * 8
    text = Gemma3TextConfig(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=[tokenizer.eos_token_id, end_of_turn], **SHAPES[shape]["text"])
    vision = SiglipVisionConfig(vision_use_head=False, **SHAPES[shape]["vision"])
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=IMAGE_TOKENS,
                          boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
                          image_token_index=tokenizer.image_token_id)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)  # a 4B model initialised in bf16 directly: half the memory
    try:
        model = Gemma3ForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.02)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    return model


def write_checkpoint(shape: str, out: Path) -> Path:
    """A loadable checkpoint folder (model + processor), written once and reused."""
    import torch

    if (out / "config.json").is_file():
        return out
    processor = build_processor(shape)
    model = build_model(shape, processor.tokenizer, torch.bfloat16 if shape == "real" else torch.float32)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(out)
    return out
