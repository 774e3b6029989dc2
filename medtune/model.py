"""Load MedGemma (or the tiny offline stand-in) with its processor, in the recipe's precision, optionally in
4 bits for QLoRA; describe the LoRA adapter to train; set up the forward pass for training speed (the frozen
vision tower out of autograd, optionally compiled decoder layers)."""
from __future__ import annotations

import functools

from medtune.config import Recipe
from medtune.errors import MedtuneError
from medtune.medsiglip import VISION_LORA_TARGETS
from medtune.rows import tokenizer_of
from medtune.shared_prefix import install_branch_masks
from medtune.tiny import TINY_TWINS, tiny_checkpoint_dir

VISION_TOWER = "model.vision_tower"  # SigLIP, in Gemma 3's module tree
# the decoder layers of Gemma3ForConditionalGeneration, and of Gemma3ForCausalLM (a text-only model: MedGemma 27B
# text), where the language model is the whole model
DECODER_LAYERS = {"multimodal": "model.language_model.layers", "text": "model.layers"}
# Kept in full precision under QLoRA: quantizing the vision tower and projector hurts image features, and
# lm_head is tied to the embeddings. Names match from the start of the module path (DESIGN.md).
QLORA_SKIP_MODULES = [VISION_TOWER, "model.multi_modal_projector", "lm_head"]


def resolve_precision(preference: str) -> str:
    """bf16 on a GPU that supports it, fp32 elsewhere (fp16 overflows in Gemma 3, so it is never chosen)."""
    import torch

    if preference != "auto":
        return preference
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def model_path(recipe: Recipe) -> str:
    name = recipe.model.name_or_path
    if name not in TINY_TWINS:
        return name
    from accelerate import PartialState

    with PartialState().main_process_first():  # one rank builds the tiny checkpoint, the others then load it
        return str(tiny_checkpoint_dir(name))


def hub_errors(name: str):
    """Turn the Hub's exceptions into one-line messages with the fix."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    class _Guard:
        def __enter__(self):
            return self

        def __exit__(self, kind, error, tb):
            if isinstance(error, GatedRepoError):
                raise MedtuneError(f"{name} is gated: accept its terms on the Hub, then set HF_TOKEN or run "
                                   "`hf auth login`") from None
            if isinstance(error, RepositoryNotFoundError):
                raise MedtuneError(f"model.name_or_path: {name!r} was not found on the Hub (or is private: set "
                                   "HF_TOKEN)") from None
            if isinstance(error, OSError) and error is not None:
                raise MedtuneError(f"model.name_or_path: cannot load {name!r}: {error}. Offline? Use "
                                   "model.name_or_path=tiny, or a local copy of the model") from None
            return False

    return _Guard()


def load_processor(recipe: Recipe):
    from transformers import AutoProcessor

    with hub_errors(recipe.model.name_or_path):
        processor = AutoProcessor.from_pretrained(model_path(recipe), revision=recipe.model.revision)
    if recipe.model.prompt_format == "plain":  # a pt model's form (medtune/prompts.py), whatever it ships
        processor.chat_template = tokenizer_of(processor).chat_template = None
    return processor


def is_text_only(recipe: Recipe) -> bool:
    """Whether the model has no vision tower (its config has no vision_config): a causal LM, loaded as one."""
    from transformers import AutoConfig

    with hub_errors(recipe.model.name_or_path):
        config = AutoConfig.from_pretrained(model_path(recipe), revision=recipe.model.revision)
    return not hasattr(config, "vision_config")


def quantization_config(recipe: Recipe, precision: str):
    import torch
    from transformers import BitsAndBytesConfig

    q = recipe.quantization
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
        bnb_4bit_quant_storage=torch.bfloat16 if precision == "bf16" else torch.float32,
        llm_int8_skip_modules=QLORA_SKIP_MODULES,
    )


def attention_implementations(recipe: Recipe) -> dict[str, str]:
    """transformers' per-sub-config form: the language model's attention (also the top-level config's, "")
    and the vision tower's."""
    text = recipe.model.attn_implementation
    return {"": text, "text_config": text, "vision_config": recipe.model.vision_attn_implementation}


def load_model(recipe: Recipe, precision: str, quantize: bool | None = None):
    """The base model. `quantize` defaults to the recipe's choice; export's merge loads it unquantized."""
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.integrations import is_deepspeed_zero3_enabled

    quantize = recipe.quantization.load_in_4bit if quantize is None else quantize
    kwargs = {"dtype": torch.bfloat16 if precision == "bf16" else torch.float32,
              "attn_implementation": attention_implementations(recipe), "revision": recipe.model.revision}
    if quantize:
        kwargs["quantization_config"] = quantization_config(recipe, precision)
    if not is_deepspeed_zero3_enabled():
        # Straight onto this process's device (a quantized model cannot be moved after loading). Under ZeRO-3
        # there is no device map: DeepSpeed partitions the weights over the ranks as they load.
        kwargs["device_map"] = {"": PartialState().device}
    auto_class = AutoModelForCausalLM if is_text_only(recipe) else AutoModelForImageTextToText
    with hub_errors(recipe.model.name_or_path):
        model = auto_class.from_pretrained(model_path(recipe), **kwargs)
    encode_each_distinct_image_once(model)
    if vision_tower(model) is not None:  # packed questions about one image (medtune/shared_prefix.py)
        install_branch_masks(model.model)
    return model


def lora_config(recipe: Recipe, text_only: bool = False):
    from peft import LoraConfig

    lora = recipe.lora
    if text_only and (lora.adapt_vision_tower or lora.train_projector):
        key = "adapt_vision_tower" if lora.adapt_vision_tower else "train_projector"
        raise MedtuneError(f"lora.{key}: {recipe.model.name_or_path} is a text-only model (no vision tower or "
                           "projector): set it to false")
    # A regex, so that the same projection names in the vision tower are left alone unless asked for.
    layers = DECODER_LAYERS["text" if text_only else "multimodal"].replace(".", r"\.")
    targets = [rf"{layers}\.\d+\..*\.({'|'.join(lora.target_modules)})"]
    if lora.adapt_vision_tower:
        targets.append(rf".*vision_tower.*\.({'|'.join(VISION_LORA_TARGETS)})")
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules="|".join(f"({t})" for t in targets),
        # the projector is a bare weight matrix (no nn.Linear for LoRA): it is trained whole when asked
        modules_to_save=["multi_modal_projector"] if lora.train_projector else None,
    )


def _submodule(model, paths):
    """The first of `paths` the model (or the model under its PEFT wrapper) has, else None."""
    for root in (model, getattr(model, "get_base_model", lambda: None)()):
        for path in paths:
            try:
                return root.get_submodule(path)
            except AttributeError:
                continue
    return None


def decoder_layers(model):
    """The language model's decoder layers, whichever Gemma 3 class holds them."""
    layers = _submodule(model, DECODER_LAYERS.values())
    if layers is None:
        raise MedtuneError(f"no decoder layers at {' or '.join(DECODER_LAYERS.values())}: not a Gemma 3 model?")
    return layers


def vision_tower(model):
    """The model's vision tower (under a PEFT wrapper too), or None for a text-only model."""
    return _submodule(model, (VISION_TOWER,))


def _route_forward(module, marker: str, choose) -> None:
    """Replace `module`'s forward on the instance by `choose(forward)(*args, **kwargs)` at every call.

    The instance's `forward`, not the module, is replaced: state-dict names, quantization skip lists, PEFT's
    module lookups and DeepSpeed's parameter hooks (which run in `__call__`, around `forward`) are untouched.
    `marker` makes it idempotent (a model reused by several trainers is wrapped once)."""
    forward = module.forward
    if getattr(forward, marker, False):
        return

    @functools.wraps(forward)
    def routed(*args, **kwargs):
        return choose(forward)(*args, **kwargs)

    setattr(routed, marker, True)
    module.forward = routed


def keep_frozen_vision_tower_out_of_autograd(model) -> None:
    """Run the vision tower without recording for autograd whenever none of its parameters trains.

    Why: with gradient checkpointing on a PEFT model, TRL and PEFT call `enable_input_require_grads()`, which
    since transformers 5 hooks the input embeddings of every sub-model, SigLIP's patch embedding included. The
    frozen 400M-parameter tower (4,096 patches per 896 px image) is then recorded, checkpointed, recomputed and
    back-propagated for a gradient nobody uses: 3.7x the step time on an H100 (BENCHMARKS.md). Without
    recording its output has no `grad_fn`; the projector after it still trains when asked
    (`lora.train_projector`), and the language model's own embeddings keep their hook, which reentrant
    checkpointing (forced by TRL under ZeRO-3) needs.

    Decided at each call from the tower's parameters as they are then, so LoRA that PEFT adds inside the tower
    later (`lora.adapt_vision_tower`) keeps it in autograd.
    """
    import torch

    tower = vision_tower(model)
    if tower is None:  # a text-only model
        return

    def choose(forward):
        if torch.is_grad_enabled() and not any(p.requires_grad for p in tower.parameters()):
            return torch.no_grad()(forward)
        return forward

    _route_forward(tower, "medtune_frozen_tower", choose)


def encode_each_distinct_image_once(model) -> None:
    """The vision tower encodes each image of a batch once where the same image follows itself: the questions
    evaluation asks of one image (a chest X-ray's findings, a VQA image's questions) sit together in a batch, and
    the tower's 4,096 patches an image (at 896 px) cost more than a question's whole language-model pass. Exact:
    the copies get the features their image would have got (a gather, which autograd follows where the tower
    trains). A batch without repeats runs as before, after one comparison of neighbouring images."""
    import torch

    tower = vision_tower(model)
    if tower is None:  # a text-only model
        return

    def choose(forward):
        def encode_distinct(pixel_values, *args, **kwargs):
            if pixel_values.shape[0] < 2:
                return forward(pixel_values, *args, **kwargs)
            repeats = (pixel_values[1:] == pixel_values[:-1]).flatten(1).all(dim=1)
            if not bool(repeats.any()):
                return forward(pixel_values, *args, **kwargs)
            first = torch.cat([repeats.new_ones(1), ~repeats])  # where a new image starts
            which = first.cumsum(0) - 1  # each image's distinct image
            out, distinct = forward(pixel_values[first], *args, **kwargs), int(first.sum())

            def spread(value):  # a distinct image's tensor to each of its copies (hidden states: each layer's)
                if isinstance(value, tuple):
                    return tuple(spread(v) for v in value)
                return value[which] if isinstance(value, torch.Tensor) and value.shape[:1] == (distinct,) else value

            for key, value in out.items():
                out[key] = spread(value)
            return out
        return encode_distinct

    _route_forward(tower, "medtune_distinct_images", choose)


def compile_decoder_layers(model) -> None:
    """`model.compile_decoder_layers`: torch.compile each decoder layer for the training steps.

    Layer by layer rather than the whole model: the vision tower, the masks and the fused loss stay outside the
    compiled graphs, and each layer's LoRA and checkpointing (a higher-order op that Dynamo traces) are
    compiled with it. Only training steps run compiled: evaluation (eval mode, no
    gradients) generates with a growing KV cache, whose shapes would recompile at every new length."""
    import torch

    for layer in decoder_layers(model):
        # sequence lengths vary from batch to batch: dynamic shapes from the start
        compiled = torch.compile(layer.forward, dynamic=True)

        def choose(forward, layer=layer, compiled=compiled):
            return compiled if layer.training and torch.is_grad_enabled() else forward

        _route_forward(layer, "medtune_compiled", choose)
