"""Build a tiny, offline, deterministic MedGemma-shaped model: `model.name_or_path=tiny`.

A `Gemma3ForConditionalGeneration` and `Gemma3Processor` with Gemma 3's special tokens, chat template and
image-token expansion, small enough to train on a CPU in seconds. It is written once to a cache folder and
then loaded with the same `from_pretrained` code as the real model (so 4-bit loading, LoRA and export are
exercised for real). Traps found while writing it are in DESIGN.md ("Known traps").
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from medtune.thinking import TRACE_CLOSE, TRACE_OPEN

TINY_NAME = "tiny"
# The language model's layout of each twin, at small widths: `tiny` is MedGemma 4B's (2 query heads per key/value
# head, queries scaled by head_dim), `tiny-27b` MedGemma 27B's (2 query heads per key/value head, queries scaled by
# hidden / heads as 27B's 168 = 5376 / 32, the intermediate 4 x hidden, and five sliding-window layers to one global,
# 27B's pattern, in one full period of 6 layers): what would break on 27B's dimensions breaks on it. Both share the
# vision tower, as the real models do. Heads are 32 wide, the smallest that serving engines' attention kernels take
# (vLLM's CPU attention: 32, 64, 80, ... 256, 512), so that a twin and what medtune exports of it can be served.
# `tiny-27b-text` is MedGemma 27B text's twin: 27B's language model alone (Gemma3ForCausalLM), with a tokenizer and
# no image processor, as google/medgemma-27b-text-it ships.
_LAYOUT_4B = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window_pattern=2)
# Widths are multiples of 64, bitsandbytes' 4-bit block: its CPU inference kernel (0.50) refuses a layer whose input
# width is not (the real models' all are).
_LAYOUT_27B = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=8,
                   num_key_value_heads=4, head_dim=32, query_pre_attn_scalar=16, sliding_window_pattern=6)
TINY_LAYOUTS = {TINY_NAME: _LAYOUT_4B, "tiny-27b": _LAYOUT_27B, "tiny-27b-text": _LAYOUT_27B}
TEXT_ONLY_TWINS = frozenset({"tiny-27b-text"})
# MedSigLIP-448's twin (google/medsiglip-448): SigLIP's image and text towers (SiglipModel) with a SiglipProcessor,
# at MedGemma's twins' image size and vocabulary
TINY_ENCODER = "tiny-siglip"
TINY_TWINS = (*TINY_LAYOUTS, TINY_ENCODER)  # every name `model.name_or_path` takes for a twin
TINY_VERSION = 7  # bump when the architecture or tokenizer below changes: the cache is keyed on it
IMAGE_SIZE, PATCH, MM_TOKENS = 64, 16, 4  # 4x4 patch grid, average-pooled to 2x2 = 4 image tokens

SPECIALS = [  # ids 0..4 match Gemma (pad=0, eos=1, bos=2, unk=3, mask=4)
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
]
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]  # byte fallback, like the real Gemma tokenizer

# The words the built-in tasks use, so prompts and answers tokenize compactly (as they would with the
# real 262k vocabulary) and the tiny model learns in a few hundred steps.
CORPUS = [
    "What is the most likely tissue type shown in the histopathology image?",
    "A: adipose", "B: background", "C: debris", "D: lymphocytes", "E: mucus", "F: smooth muscle",
    "G: normal colon mucosa", "H: cancer-associated stroma", "I: colorectal adenocarcinoma epithelium",
    "Is there a pneumothorax in this chest X-ray? A: no pneumothorax B: pneumothorax",
    "INDICATION: FINDINGS: IMPRESSION: The lungs are clear. No pleural effusion or pneumothorax.",
    "There is a small nodule in the right upper lobe. Cardiomegaly is present. No acute findings.",
    "Write the FINDINGS and IMPRESSION sections of the radiology report for this chest X-ray.",
    "The lungs are clear. The cardiomediastinal silhouette is normal. No acute cardiopulmonary process.",
    "There is a moderate right pleural effusion with adjacent atelectasis. The heart size is normal.",
    "The heart is enlarged. Cardiomegaly without acute cardiopulmonary process. Evaluate for pneumonia.",
    "___M with cough ___F with shortness of breath Chest pain Fever, rule out infection Preoperative evaluation",
    "Describe the image. user model system assistant answer option",
]

# Gemma 3's chat template, character for character (google/gemma-3-*-it and google/medgemma-4b-it).
# TRL recognises it and swaps in its training variant with {% generation %} markers for the
# assistant-only loss, exactly as it does for the real model.
GEMMA3_CHAT_TEMPLATE = '{{ bos_token }}\n{%- if messages[0][\'role\'] == \'system\' -%}\n    {%- if messages[0][\'content\'] is string -%}\n        {%- set first_user_prefix = messages[0][\'content\'] + \'\n\n\' -%}\n    {%- else -%}\n        {%- set first_user_prefix = messages[0][\'content\'][0][\'text\'] + \'\n\n\' -%}\n    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = "" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message[\'role\'] == \'user\') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n    {%- endif -%}\n    {%- if (message[\'role\'] == \'assistant\') -%}\n        {%- set role = "model" -%}\n    {%- else -%}\n        {%- set role = message[\'role\'] -%}\n    {%- endif -%}\n    {{ \'<start_of_turn>\' + role + \'\n\' + (first_user_prefix if loop.first else "") }}\n    {%- if message[\'content\'] is string -%}\n        {{ message[\'content\'] | trim }}\n    {%- elif message[\'content\'] is iterable -%}\n        {%- for item in message[\'content\'] -%}\n            {%- if item[\'type\'] == \'image\' -%}\n                {{ \'<start_of_image>\' }}\n            {%- elif item[\'type\'] == \'text\' -%}\n                {{ item[\'text\'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n        {{ raise_exception("Invalid content type") }}\n    {%- endif -%}\n    {{ \'<end_of_turn>\n\' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{\'<start_of_turn>model\n\'}}\n{%- endif -%}\n'  # noqa: E501 (TRL's template, verbatim)


def _build_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")  # training only
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS + BYTE_TOKENS, show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in json.loads(tok.to_str())["model"]["merges"]]
    vocab = tok.get_vocab()
    # Gemma's runs of newlines are single tokens ("\n" ... "\n\n\n\n", ids 107-110 in the real vocabulary): the
    # processor puts "\n\n" around every image, and serving engines rely on them (vLLM's Gemma 3 processor looks
    # them up by text). Merged first, so that a run of newlines always tokenizes as it does in Gemma.
    newlines = ["\n" * n for n in range(1, 5)]
    vocab.update({run: len(vocab) + i for i, run in enumerate(r for r in newlines if r not in vocab)})
    merges = [("\n", "\n"), ("\n\n", "\n"), ("\n\n", "\n\n")] + merges
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )
    tokenizer.add_tokens(["<start_of_turn>", "<end_of_turn>"], special_tokens=True)
    # MedGemma 1.5's thinking-trace markers (medtune/thinking.py), as special tokens: the case where decoding
    # with skip_special_tokens would drop them
    tokenizer.add_tokens([TRACE_OPEN, TRACE_CLOSE], special_tokens=True)
    return tokenizer


def build_tiny_processor():
    from transformers import Gemma3Processor

    try:  # transformers 5: the torchvision-free PIL image processor
        from transformers import Gemma3ImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - transformers 4
        from transformers import Gemma3ImageProcessor as ImageProcessor

    image_processor = ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True, resample=2,
    )
    return Gemma3Processor(image_processor=image_processor, tokenizer=_build_tokenizer(),
                           chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=MM_TOKENS)


def build_tiny_model(tokenizer, name: str = TINY_NAME):
    import torch
    from transformers import (Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig,
                              SiglipVisionConfig)

    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    text_config = Gemma3TextConfig(
        vocab_size=((len(tokenizer) + 7) // 8) * 8, **TINY_LAYOUTS[name], max_position_embeddings=1024,
        sliding_window=32, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end_of_turn],
    )
    torch.manual_seed(0)
    if name in TEXT_ONLY_TWINS:
        model = Gemma3ForCausalLM(text_config).eval()
    else:
        vision_config = SiglipVisionConfig(
            image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=1, vision_use_head=False,  # one head 32 wide (see above)
        )
        config = Gemma3Config(
            text_config=text_config, vision_config=vision_config, mm_tokens_per_image=MM_TOKENS,
            boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
            image_token_index=tokenizer.image_token_id,
        )
        model = Gemma3ForConditionalGeneration(config).eval()
        with torch.no_grad():
            # Gemma 3 initialises the projector to zeros: images would have no effect on a random model.
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.02)
    with torch.no_grad():
        # With 64 hidden units, std-0.02 embeddings (tied to lm_head) give logits within about +-1: every
        # next-token distribution stays nearly flat however the model learns. A wider spread lets the tiny
        # model become as confident as a real one (needed to compare option scoring with generation).
        model.get_input_embeddings().weight.normal_(0, 0.2)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny_siglip(tokenizer):
    """(SiglipModel, SiglipProcessor): a random MedSigLIP-shaped encoder pair, small enough for a CPU."""
    import torch
    from transformers import (SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor, SiglipTextConfig,
                              SiglipVisionConfig)

    text_config = SiglipTextConfig(vocab_size=((len(tokenizer) + 7) // 8) * 8, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                                   pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
    vision_config = SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2)  # with its pooling head
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=text_config, vision_config=vision_config)).eval()
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=2,
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return model, SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_in_google_layout(folder: Path) -> None:
    """Rename a freshly built Gemma 3's saved weights to the names Google's checkpoints use. transformers 5 saves a
    model it built itself under its internal names (`vision_tower.embeddings...`) and one it loaded from Google's
    checkpoint under Google's (`vision_tower.vision_model.embeddings...`, undoing the renames it made on loading);
    serving engines (vLLM) read only Google's. Written this way, the twin loads as google/medgemma-4b-it does, and
    whatever medtune saves of it (a merged export) comes out in Google's layout too."""
    from safetensors.torch import load_file, save_file

    prefix, google = "vision_tower.", "vision_tower.vision_model."
    for path in Path(folder).glob("*.safetensors"):
        weights = load_file(path)
        if any(name.startswith(google) for name in weights):
            continue
        save_file({google + name[len(prefix):] if name.startswith(prefix) else name: tensor
                   for name, tensor in weights.items()}, path, metadata={"format": "pt"})


def tiny_checkpoint_dir(name: str = TINY_NAME) -> Path:
    """Where the tiny twin `name` lives; built on first use. MEDTUNE_CACHE overrides ~/.cache/medtune."""
    root = Path(os.environ.get("MEDTUNE_CACHE", Path.home() / ".cache" / "medtune"))
    path = root / f"{name}-gemma3-v{TINY_VERSION}"
    if not (path / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        # Several ranks may build it at once: each writes its own folder, and the first rename wins.
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
        processor = build_tiny_processor()
        if name == TINY_ENCODER:
            model, encoder_processor = build_tiny_siglip(processor.tokenizer)
            model.save_pretrained(tmp)
            encoder_processor.save_pretrained(tmp)
        else:
            build_tiny_model(processor.tokenizer, name).save_pretrained(tmp)
            if name not in TEXT_ONLY_TWINS:
                save_in_google_layout(tmp)
        if name == TINY_ENCODER:
            pass  # saved with its own processor above
        elif name in TEXT_ONLY_TWINS:  # the tokenizer alone, with the chat template: what AutoProcessor then gives
            processor.tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
            processor.tokenizer.save_pretrained(tmp)
        else:
            processor.save_pretrained(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return path
