"""Recipes: load a YAML file, apply `section.key=value` overrides, validate everything before anything heavy.

A recipe has the sections below; `training` takes any `trl.SFTConfig` field, and with `training.method: grpo` the
training arguments GRPO shares with SFT, GRPO's own keys in the `grpo` section (any `trl.GRPOConfig` field of its own,
and medtune's rewards: GRPO_KEYS). Validation reports the first
problem as a `RecipeError` naming the key and the fix; the command line prints it as one line and exits 2.
Nothing here imports torch, transformers or TRL, so a typo is refused in well under a second.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medtune import medsiglip
from medtune import recipe_checks as checks
from medtune.errors import RecipeError
from medtune.recipe_checks import suggest
from medtune.sft_fields import config_fields, own_fields, sft_config_fields

__all__ = ["Recipe", "RecipeError", "load_recipe", "load_yaml", "parse_override"]


def _range(low=None, high=None, low_open=False):
    return {"range": (low, high, low_open)}


@dataclass
class TaskSection:
    name: str = ""  # a module of medtune/tasks/
    # for the generic tasks (your own data); None: as the dataset was prepared.
    # The question asked with each image (a free-text task: where a row has none of its own)
    question: str | None = None
    # classification: class -> the option text the model reads (`smooth_muscle: smooth muscle`); classes left
    # out keep the dataset's text. `python -m data_prep ... --recipe` writes them into the prompts.
    options: dict | None = None
    # the prompts asked and the answer form trained and read: the task's `medtune` (its default), or the prompts
    # MedGemma's published figures were measured with (`medgemma-...`: medtune/tasks/_medgemma_prompts.py). None:
    # as the data was prepared (its prompts were written then; data_prep ... --protocol or --recipe chooses)
    protocol: str | None = None


@dataclass
class ModelSection:
    # or `tiny` / `tiny-27b` / `tiny-27b-text`: a tiny random model with MedGemma 4B's / 27B's / 27B text's layout,
    # offline (medtune/tiny.py); on a MedSigLIP recipe (encoder.method) `tiny` is `tiny-siglip`, MedSigLIP's twin
    name_or_path: str = "google/medgemma-4b-it"
    revision: str | None = None
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on a bf16-capable GPU, else fp32
    # The language model's attention. SDPA: Gemma 3 has no attention soft-capping (Gemma 2's reason for eager), the
    # loss is the same (tests/test_training_step.py) and an H100 trains faster with it (BENCHMARKS.md).
    attn_implementation: Literal["eager", "sdpa"] = "sdpa"
    # The vision tower's: 4096 patches per 896 px image, where eager attention materialises a 4096 x 4096 score
    # matrix per head (benchmarks/vision_attention.md, on a CPU: SDPA 2.2x faster with 22% of the memory, the
    # same features to 1e-6)
    vision_attn_implementation: Literal["eager", "sdpa"] = "sdpa"
    # torch.compile each decoder layer (fuses norms, GeGLU, rotary and residual adds); the first steps compile.
    # Off until a GPU measurement shows it faster (benchmarks/train_throughput.py, variant +compile)
    compile_decoder_layers: bool = False
    # auto: the chat template where the processor has one (the IT models), else the plain form of the pretrained
    # models, `<bos><start_of_image> {prompt}` then the answer (medtune/prompts.py); plain: that form always
    prompt_format: Literal["auto", "plain"] = "auto"
    # GRPO (training.method: grpo) from a supervised fine-tune: the OUTPUT_DIR of an SFT run of this base model. Its
    # adapter is trained on (not merged first: medtune/grpo.py says why); null: a new adapter on the base model
    adapter: str | None = None


@dataclass
class DataSection:
    path: str = ""  # the DatasetDict written by `python -m data_prep`
    max_train_samples: int | None = field(default=None, metadata=_range(1))
    max_validation_samples: int | None = field(default=None, metadata=_range(1))
    max_test_samples: int | None = field(default=None, metadata=_range(1))
    seed: int = 42  # which samples the caps keep; the split seed for `python -m data_prep ... --recipe`
    # the share held out for test by readers that make their own test split (SIIM-ACR, by patient);
    # None: as the dataset was prepared. `python -m data_prep ... --recipe` applies it.
    test_fraction: float | None = field(default=None, metadata=_range(0.0, 0.9))


@dataclass
class LoraSection:
    r: int = field(default=16, metadata=_range(1))
    alpha: int = field(default=16, metadata=_range(1))
    dropout: float = field(default=0.05, metadata=_range(0.0, 1.0))
    target_modules: list = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    adapt_vision_tower: bool = False  # LoRA on the SigLIP tower too (off: it is frozen, as in the report)
    train_projector: bool = False  # train the (small) image projector fully


@dataclass
class QuantizationSection:
    load_in_4bit: bool = False  # QLoRA: the language model in 4 bits; vision, projector, lm_head unquantized
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


@dataclass
class EvalSection:
    baseline: bool = True  # evaluate the base model (out-of-box) before training
    finetuned: bool = True  # evaluate the adapter after training
    split: str = "test"
    # generate: greedy generation, answers parsed (the paper's way); score: one forward pass per example
    # scores each option (classification tasks only): faster, never unparsable, gives AUROC
    mode: Literal["generate", "score"] = "generate"
    # rows; None: 16 images' worth when generating (16 rows of text), when scoring on a GPU as many images as fit
    # (16 to 64), at least one row (inference.default_batch_size)
    batch_size: int | None = field(default=None, metadata=_range(1))
    max_new_tokens: int | None = field(default=None, metadata=_range(1))  # None: the task's default
    # processes that decode and preprocess the next batches' images while the model runs; 0: none (in the main
    # process); None: on a GPU one per core the process can spare (at most 8), on a CPU none
    num_workers: int | None = field(default=None, metadata=_range(0))
    # validation during training (training.eval_strategy): tasks without options (reports) are scored on the
    # task metric by greedy generation, on this many validation rows (generation is slow)
    validation_generations: int = field(default=32, metadata=_range(1))
    # benchmarks run on the base model and the fine-tuned adapter after the task's own evaluation, each with its
    # protocol (medtune/bench.py): a suite file (recipes/benchmarks/medgemma-card.yaml), or a list of the card
    # suite's benchmarks ([medqa, slake]); null: none. What a fine-tune cost on everything else
    benchmarks: str | list | None = None
    benchmark_data: str = "data"  # where each benchmark's prepared folder is (BENCHMARK_DATA/<name>)


@dataclass
class EncoderSection:
    """MedSigLIP (google/medsiglip-448, or the tiny-siglip twin): the family's image encoder as a classifier
    (medtune/encoder.py). Unset `method`: the recipe is a MedGemma one."""
    # zeroshot: each image scored against one text per class; probe: a linear classifier on the image embeddings;
    # lora: LoRA on the vision tower (lora.r, .alpha, .dropout) with a classification head, trained by `training`
    method: Literal["zeroshot", "probe", "lora"] | None = None
    # zero-shot: the texts a class is scored against, averaged; {} is the class's option text
    templates: list = field(default_factory=lambda: ["{}"])
    # probe: scikit-learn's C (inverse regularisation) values tried; the best on the validation split is kept
    probe_c: list = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0, 100.0])
    batch_size: int = field(default=64, metadata=_range(1))  # images an embedding batch
    num_workers: int | None = field(default=None, metadata=_range(0))  # as eval.num_workers


@dataclass
class ExportSection:
    merge: bool = False  # also write a merged full model to OUTPUT_DIR/merged
    push: bool = False
    repo_id: str | None = None
    private: bool = True


@dataclass
class TrackingSection:
    backend: Literal["wandb", "tensorboard", "none"] = "wandb"
    project: str = "medtune"
    run_name: str | None = None
    wandb_mode: Literal["online", "offline"] = "online"  # offline works without a network; sync later
    # sample predictions with their images in the tracker; None: yes for public datasets, no for
    # credentialed ones (the task says which), whose sample table (report text) is then left out too
    log_images: bool | None = None
    num_sample_predictions: int = field(default=16, metadata=_range(0))


SECTIONS: dict[str, type] = {
    "task": TaskSection, "model": ModelSection, "data": DataSection, "lora": LoraSection,
    "quantization": QuantizationSection, "eval": EvalSection, "encoder": EncoderSection, "export": ExportSection,
    "tracking": TrackingSection,
}
# training keys that another section owns, and why
_OWNED_ELSEWHERE = {
    "bf16": "precision is set by model.precision (bf16 on capable GPUs, fp32 on CPU)",
    "fp16": "fp16 overflows in Gemma 3; precision is set by model.precision",
    "report_to": "the tracker is set by tracking.backend",
    "use_cpu": "chosen from the hardware (CPU only where no GPU is visible)",
    "hub_token": "a token would be saved with the recipe: set HF_TOKEN or run `hf auth login` instead",
    "assistant_only_loss": "medtune always trains on the answer only (DESIGN.md)",
}
# transformers 5.24 renamed these; when both names are set the new one wins silently, so the old one is refused
_RENAMED = {"gradient_checkpointing": "activation_checkpointing",
            "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}
_TRAINING_DEFAULTS = {"output_dir": None}
# training keys that are medtune's, not SFTConfig's: key -> (type names, choices, metadata)
MEDTUNE_TRAINING_KEYS = {
    # stop when the validation metric (training.metric_for_best_model) has not improved for this many evaluations
    "early_stopping_patience": (frozenset({"int", "None"}), None, _range(1)),
    # sft: supervised fine-tuning on the answers (TRL's SFTTrainer); grpo: reinforcement learning with the task's own
    # metric as the reward (TRL's GRPOTrainer, medtune/grpo.py), from the base model or an SFT run (model.adapter)
    "method": (None, ("sft", "grpo"), {}),
}
# the `grpo` section's keys that are medtune's, not GRPOConfig's: key -> (type names, metadata). The reward of a
# completion is metric_weight x the task's per-example metric + format_weight x its format reward + each of
# reward_funcs' weight x its value (medtune/rewards.py)
GRPO_KEYS = {
    "reward_metric": (frozenset({"str", "None"}), {}),  # a per-example score of the task; null: the task's own choice
    "metric_weight": (frozenset({"float"}), _range(0)),
    "format_weight": (frozenset({"float"}), _range(0)),  # 0: no format reward
    # your own rewards: ["my_module:my_reward", ...] (weight 1), or {"my_module:my_reward": 0.5, ...}; each is
    # called as TRL calls a reward function (prompts, completions, completion_ids and the dataset's columns)
    "reward_funcs": (frozenset({"list", "dict"}), {}),
}
GRPO_DEFAULTS = {"metric_weight": 1.0, "format_weight": 0.2, "reward_funcs": []}
# GRPOConfig keys medtune sets itself, and why
_GRPO_OWNED = {
    "reward_weights": "set grpo.metric_weight, grpo.format_weight and the weights in grpo.reward_funcs",
    "log_completions": "sampled completions go to the tracker for public datasets only: tracking.log_images decides",
    "log_multimodal": "sampled completions go to the tracker for public datasets only: tracking.log_images decides",
    "log_completions_hub_repo": "completions may hold a hospital's data: a run uploads none",
    "model_init_kwargs": "the model section loads the model (model.precision, quantization, attention)",
    "trust_remote_code": "MedGemma needs no remote code",
    "use_vllm": "vLLM pins an older transformers and its own torch: medtune samples with transformers' generate",
    "use_transformers_continuous_batching": "TRL's continuous batching takes no images (a vision-language model)",
    "use_transformers_paged": "TRL's continuous batching takes no images (a vision-language model)",
}
# GRPOConfig ranges and choices worth refusing early (TRL 1.16's documented values)
_GRPO_RANGES = {
    "num_generations": _range(2), "num_generations_eval": _range(1), "max_completion_length": _range(1),
    "generation_batch_size": _range(1), "steps_per_generation": _range(1), "num_iterations": _range(1),
    "temperature": _range(0, None), "top_p": _range(0, 1.0), "top_k": _range(0), "beta": _range(0),
    "epsilon": _range(0), "epsilon_high": _range(0), "repetition_penalty": _range(0, None),
    "top_entropy_quantile": _range(0.0, 1.0),
}
_GRPO_CHOICES = {
    "loss_type": ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
    "scale_rewards": ("group", "batch", "none"),
    "importance_sampling_level": ("token", "sequence"),
    "multi_objective_aggregation": ("sum_then_normalize", "normalize_then_sum"),
}


@dataclass
class Recipe:
    task: TaskSection
    model: ModelSection
    data: DataSection
    lora: LoraSection
    quantization: QuantizationSection
    eval: EvalSection
    encoder: EncoderSection
    export: ExportSection
    tracking: TrackingSection
    training: dict[str, Any]  # SFTConfig keyword arguments (GRPOConfig's under training.method: grpo)
    grpo: dict[str, Any] = field(default_factory=dict)  # GRPO's own keys and medtune's rewards (GRPO_KEYS)
    source: str = ""  # the recipe file

    @property
    def method(self) -> str:
        return self.training.get("method", "sft")

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data; what is saved or shown goes through `run_info.mask_secrets` first."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out["training"] = dict(self.training)
        if self.method == "grpo":
            out["grpo"] = dict(self.grpo)
        return out


# ----------------------------------------------------------------------------- loading
class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2's scalars, not 1.1's: `2e-4` (no dot) is a float, not a string; `no`, `yes`, `on` and `off` are
    strings, not booleans (`training.eval_strategy=no` means the strategy "no")."""


_RecipeLoader.yaml_implicit_resolvers = {  # a copy without 1.1's booleans, then 1.2's added back
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: no arbitrary objects


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); the value is read as YAML (numbers, bools, lists)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise RecipeError(key.strip() or text, f"override {text!r} must look like section.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def load_recipe(path: str | Path, overrides: list[str] = (), check_data: bool = True) -> Recipe:
    """The recipe file with its overrides, checked through (this module's schema, then medtune/recipe_checks.py).
    `check_data=False` for what needs no data (exporting a finished run, perhaps on another machine)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError("", f"recipe file {str(path)!r} not found (recipes live in recipes/<task>/)")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError("", f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise RecipeError("", f"{path} must be a mapping of sections (task, model, data, ...)")
    for text in overrides:
        (section, key), value = parse_override(text)
        if not isinstance(raw.get(section, {}), dict):
            raise RecipeError(section, "must be a mapping")
        raw.setdefault(section, {})[key] = value
    recipe = build_recipe(raw)  # every key known, of its type and in its range
    recipe.source = str(path)
    checks.check_task(recipe)
    medsiglip.resolve_twin(recipe)  # `tiny` on a MedSigLIP recipe is MedSigLIP's twin
    if check_data:
        checks.check_data(recipe)
        recipe.task = checks.task_as_prepared(recipe)  # a generic task's question and classes, from its data
    checks.check_settings(recipe, raw, check_data)
    return recipe


# ----------------------------------------------------------------------------- keys, their types and ranges
def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _admits(kinds: frozenset[str], value: Any) -> bool:
    name = "None" if value is None else type(value).__name__
    if name == "int" and "float" in kinds:  # YAML writes 1 for 1.0
        return True
    return name in kinds


def _annotation_kinds(annotation) -> tuple[frozenset[str] | None, tuple | None]:
    """(python type names, literal choices) of one of our dataclass annotations."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return None, typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        choices: list = []
        for arg in typing.get_args(annotation):
            k, c = _annotation_kinds(arg)
            kinds |= k or set()
            choices += c or []
        if choices:  # Literal[...] | None: the choices, or null
            return None, (*choices, *([None] if "None" in kinds else []))
        return frozenset(kinds), None
    if annotation is type(None):
        return frozenset({"None"}), None
    base = origin or annotation
    return frozenset({base.__name__}), None


def _check_value(key: str, value: Any, kinds, choices, metadata) -> None:
    if choices is not None and value not in choices:
        raise RecipeError(key, f"{value!r} is not one of {', '.join(map(str, choices))}"
                               f"{suggest(str(value), map(str, choices))}")
    if kinds is not None and not _admits(kinds, value):
        expected = " or ".join(sorted(k.replace("None", "null") for k in kinds))
        raise RecipeError(key, f"expected {expected}, got {_type_name(value)} {value!r}")
    low, high, _ = metadata.get("range", (None, None, False))
    if value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise RecipeError(key, f"{value} is out of range: must be {bounds}")


def _build_section(name: str, cls: type, raw: Any):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(name, f"must be a mapping of keys, got {_type_name(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in known:
            raise RecipeError(f"{name}.{key}", f"unknown key{suggest(key, known)}; "
                                               f"{name} takes: {', '.join(known)}")
        kinds, choices = _annotation_kinds(hints[key])
        _check_value(f"{name}.{key}", value, kinds, choices, known[key].metadata)
    return cls(**raw)


# SFTConfig ranges worth refusing early (TRL would fail late, or train nonsense)
_TRAINING_RANGES = {
    "learning_rate": _range(0, None), "num_train_epochs": _range(0, None), "max_steps": _range(-1),
    "per_device_train_batch_size": _range(1), "per_device_eval_batch_size": _range(1),
    "gradient_accumulation_steps": _range(1), "max_grad_norm": _range(0), "warmup_steps": _range(0),
    "weight_decay": _range(0), "logging_steps": _range(0), "save_steps": _range(0),
}


def _build_training(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecipeError("training", f"must be a mapping of SFTConfig keys, got {_type_name(raw)}")
    fields = sft_config_fields()
    grpo = raw.get("method") == "grpo"
    if grpo:  # the arguments GRPO shares with SFT; GRPO's own keys are the grpo section's
        sft_only, fields = own_fields("SFTConfig"), config_fields("GRPOConfig")
    for key, value in raw.items():
        if key in _OWNED_ELSEWHERE:
            raise RecipeError(f"training.{key}", f"not settable here: {_OWNED_ELSEWHERE[key]}")
        if key in _RENAMED:
            raise RecipeError(f"training.{key}", f"renamed: use training.{_RENAMED[key]} (transformers 5.24 "
                                                 "deprecates the old name and ignores it when the new one is set)")
        if key in MEDTUNE_TRAINING_KEYS:
            _check_value(f"training.{key}", value, *MEDTUNE_TRAINING_KEYS[key])
            continue
        if grpo and key in sft_only and key not in own_fields("GRPOConfig"):
            raise RecipeError(f"training.{key}", "an SFT setting; GRPO does not take it (training.method is grpo; "
                                                 "GRPO's own keys go in the grpo section: grpo.max_completion_length)")
        if grpo and key in own_fields("GRPOConfig"):
            raise RecipeError(f"training.{key}", f"a GRPO key: put it in the grpo section (grpo.{key})")
        if key not in fields:
            raise RecipeError(f"training.{key}", f"not an SFTConfig field{suggest(key, fields)}")
        _check_value(f"training.{key}", value, fields[key].kinds, None, _TRAINING_RANGES.get(key, {}))
    training = {**_TRAINING_DEFAULTS, **raw}
    if not training["output_dir"]:
        raise RecipeError("training.output_dir", "missing: where checkpoints, the adapter and eval/ go")
    if training.get("use_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        raise RecipeError("training.use_liger_kernel", "needs liger-kernel, whose Triton kernels run on a CUDA GPU: "
                                                       "pip install 'medtune[liger]', or set it false")
    if training.get("early_stopping_patience") and training.get("eval_strategy", "no") == "no":
        raise RecipeError("training.early_stopping_patience", "needs validation during training: set "
                                                              "training.eval_strategy: steps (and eval_steps)")
    if training.get("learning_rate") == 0:
        raise RecipeError("training.learning_rate", "0 trains nothing: use e.g. 2.0e-4")
    return training


def _build_grpo(raw: Any, method: str) -> dict[str, Any]:
    """The grpo section: GRPOConfig's own keys (read from TRL's source) and medtune's rewards (GRPO_KEYS)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError("grpo", f"must be a mapping of GRPO keys, got {_type_name(raw)}")
    if raw and method != "grpo":
        raise RecipeError(f"grpo.{next(iter(raw))}", "GRPO settings in an SFT recipe: set training.method: grpo, or "
                                                     "remove the grpo section")
    fields = own_fields("GRPOConfig")
    for key, value in raw.items():
        where = f"grpo.{key}"
        if key in _GRPO_OWNED or key.startswith("vllm_"):
            raise RecipeError(where, f"not settable here: {_GRPO_OWNED.get(key, _GRPO_OWNED['use_vllm'])}")
        if key in GRPO_KEYS:
            kinds, metadata = GRPO_KEYS[key]
            _check_value(where, value, kinds, None, metadata)
            continue
        if key not in fields:
            known = [*GRPO_KEYS, *fields]
            hint = suggest(key, known) or (" (a training argument: put it in the training section)"
                                           if key in config_fields("GRPOConfig") else "")
            raise RecipeError(where, f"not a GRPO key{hint}")
        _check_value(where, value, fields[key].kinds, _GRPO_CHOICES.get(key), _GRPO_RANGES.get(key, {}))
    funcs = raw.get("reward_funcs") or []
    weights = funcs if isinstance(funcs, dict) else dict.fromkeys(funcs, 1.0)
    for name, weight in weights.items():
        if not isinstance(name, str) or not re.fullmatch(r"[\w.]+:\w+", name):
            raise RecipeError("grpo.reward_funcs", f"{name!r} must name a function as module:function (my_rewards:"
                                                   "length_penalty), importable from where you run")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise RecipeError("grpo.reward_funcs", f"{name}: its weight must be a number, got {weight!r}")
        try:
            found = importlib.util.find_spec(name.split(":")[0]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise RecipeError("grpo.reward_funcs", f"{name}: no module {name.split(':')[0]!r} on the path (run from "
                                                   "its folder, or pip install it)")
    return {**(GRPO_DEFAULTS if method == "grpo" else {}), **raw}


def build_recipe(raw: dict[str, Any]) -> Recipe:
    """The recipe's sections, every key known and of its type and range (this module's schema)."""
    names = [*SECTIONS, "training", "grpo"]
    for name in raw:
        if name not in names:
            raise RecipeError(name, f"unknown section{suggest(name, names)}; sections: {', '.join(names)}")
    sections = {name: _build_section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()}
    training = _build_training(raw.get("training", {}))
    return Recipe(**sections, training=training, grpo=_build_grpo(raw.get("grpo"), training.get("method", "sft")))
