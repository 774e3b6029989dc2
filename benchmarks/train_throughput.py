"""Training throughput and memory: the reference notebook's recipe vs medtune's QLoRA and LoRA recipes,
side by side, at MedGemma 4B's shapes with random weights, on the same data.

    python benchmarks/train_throughput.py [--shape auto|real|scaled] [--steps 4] [--workdir /tmp/medtune-train-bench]
    python benchmarks/train_throughput.py --configs sweep          # on a GPU: every variant below, side by side
    python benchmarks/train_throughput.py --configs medtune-qlora+4x4 --slices 85   # a CT series an example

`--shape auto`: MedGemma 4B's real architecture on a GPU, the scaled one (real vocabulary and image-token
count, narrow layers) on a CPU; see medgemma_shapes.py. Each configuration trains in a process of its own
(so that peak memory is its own) for --steps optimizer steps of 16 examples (micro-batch x accumulation: the
recipe's 16 x 1, the notebook's 4 x 4), on the synthetic NCT-CRC-HE-100K stand-in, with the same seed and
data order. The first step is warm-up and is not timed.
Batches are prepared as each configuration prepares them: in the main process for the reference (the
notebook sets no loader workers), by the recipe's `dataloader_num_workers` for medtune on a GPU; on a CPU in
the main process for all, since there a worker only takes cores from the model.

Configurations:
- reference: a faithful re-implementation of Google's MedGemma fine-tuning notebook: QLoRA (NF4, double
  quantisation, the whole model quantised), LoRA r16/alpha16 on `all-linear` (vision tower included),
  `modules_to_save=["lm_head", "embed_tokens"]`, eager attention, its collate_fn (loss on every token but
  padding and image tokens), batch 4 x 4, gradient checkpointing, lr 2e-4, clipping 0.3.
- medtune-qlora / medtune-lora: recipes/tissue_classification/{qlora,lora}.yaml run through medtune's own
  trainer builder (medtune.trainer.build_trainer): what `medtune train` runs.
- medtune-METHOD+VARIANT[+VARIANT...]: the recipe with the variants' overrides (VARIANTS below), e.g.
  `medtune-lora+no-checkpointing+8x2`. Two variants undo a medtune change, to show what it buys:
  `tower-in-autograd` (the frozen vision tower recorded by autograd, as TRL + PEFT's input-gradient hooks leave
  it) and `every-position` (CPU only: TRL's CPU default of projecting every position through the 262k-row
  LM head). `medtune-lora+4x4+eager+tower-in-autograd` is the LoRA recipe as it was before issue 14.
On a CPU every configuration projects only labelled positions, as TRL does on a GPU, so that the CPU
figures stand for what a GPU runs.

`--slices N` (medtune configurations only): each example a series of N images (the stand-in's tile repeated), as
`data_prep imagefolder --series-slices N` writes a CT series: N x 256 image tokens an example, no truncation.
It measures what recipes/custom/ct_series_qlora.yaml's memory arithmetic predicts.

Columns: samples/s, tokens/s (non-padding tokens), peak memory (GPU: torch's peak allocation; CPU: the
process's peak resident set), trainable parameters, adapter size on disk, and on a GPU the model FLOPs
utilisation (6 x parameters x tokens per second, against the GPU's dense bf16 peak). The per-step losses of
each configuration are printed too, and for a variant the largest difference from its plain recipe's losses
(a variant must train the same). A configuration that fails is listed with its last error line; the others
still run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = ("reference", "medtune-qlora", "medtune-lora")
# On a CPU also medtune's LoRA recipe with TRL's CPU behaviour: every position through the LM head (on a GPU
# TRL projects only the labelled ones anyway, so there the row would repeat medtune-lora)
CPU_ONLY_CONFIGS = ("medtune-lora+every-position",)
# Variants of a medtune configuration, chained with "+" (`medtune-lora+no-checkpointing+8x2`): recipe overrides,
# what a user would set. The last two are for measuring only: they undo a medtune change to show what it buys.
VARIANTS = {
    "eager": ["model.attn_implementation=eager"],  # the language model's attention before SDPA
    "eager-vision": ["model.vision_attn_implementation=eager"],
    "4x4": ["training.per_device_train_batch_size=4", "training.gradient_accumulation_steps=4"],  # the old batching
    "8x2": ["training.per_device_train_batch_size=8", "training.gradient_accumulation_steps=2"],
    "no-checkpointing": ["training.activation_checkpointing=false"],
    "half-checkpointing": ["training.activation_checkpointing_kwargs={use_reentrant: false, every_n_layers: 2}"],
    "liger": ["training.use_liger_kernel=true"],  # Liger's RMSNorm, GeGLU and rotary kernels (CUDA only)
    "compile": ["model.compile_decoder_layers=true"],
    "tower-in-autograd": [],  # the frozen vision tower recorded by autograd, as before medtune kept it out
    "every-position": [],  # TRL's CPU default: every position through the LM head
}
# `--configs sweep`: what medtune changed and what might go further, side by side, in one GPU run (~10 minutes)
SWEEP = ("reference", "medtune-lora+4x4+eager+tower-in-autograd", "medtune-lora", "medtune-qlora",
         "medtune-lora+eager", "medtune-lora+no-checkpointing+8x2", "medtune-lora+half-checkpointing",
         "medtune-lora+liger", "medtune-lora+compile")
REFERENCE_BATCH, REFERENCE_ACCUMULATION = 4, 4  # the notebook's
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU (NVIDIA datasheets)


# ----------------------------------------------------------------------------- measuring (in the child)
class _TokenCounter:
    """Counts the non-padding tokens of every micro-batch the trainer trains on. It wraps the training step, in
    this process, because the collator may run in loader worker processes."""

    def __init__(self, trainer):
        self.tokens, self._step = 0, trainer.training_step
        trainer.training_step = self

    def __call__(self, model, inputs, *args, **kwargs):
        self.tokens += int(inputs["attention_mask"].sum())
        return self._step(model, inputs, *args, **kwargs)


def _timing_callback(counter):
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.marks, self.losses = [], []

        def on_step_end(self, args, state, control, **kwargs):
            _synchronize()
            self.marks.append((time.perf_counter(), counter.tokens))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 4))

    return StepTimes()


def _synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reference_trainer(checkpoint: Path, data: Path, out: Path, steps: int):
    """Google's notebook (medgemma/notebooks/fine_tune_with_hugging_face.ipynb), as close as the current
    libraries allow: its quantisation, LoRA, collate_fn and training arguments."""
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(
        checkpoint, attn_implementation="eager", dtype=dtype, device_map={"": 0 if on_gpu else "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True,
                                               bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                               bnb_4bit_quant_storage=dtype))
    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.tokenizer.padding_side = "right"
    peft_config = LoraConfig(lora_alpha=16, lora_dropout=0.05, r=16, bias="none", target_modules="all-linear",
                             task_type="CAUSAL_LM", modules_to_save=["lm_head", "embed_tokens"])
    tokenizer = processor.tokenizer
    boi = tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map["boi_token"])

    def collate_fn(examples):
        texts = [processor.apply_chat_template(e["messages"], add_generation_prompt=False, tokenize=False).strip()
                 for e in examples]
        images = [[e["image"].convert("RGB")] for e in examples]
        batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
        labels = batch["input_ids"].clone()
        labels[labels == tokenizer.pad_token_id] = -100
        labels[labels == boi] = -100
        labels[labels == tokenizer.image_token_id] = -100  # the notebook's 262144, <image_soft_token>
        batch["labels"] = labels
        return batch

    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=REFERENCE_BATCH,
                     gradient_accumulation_steps=REFERENCE_ACCUMULATION, gradient_checkpointing=True,
                     optim="adamw_torch_fused", logging_steps=1, save_strategy="no", eval_strategy="no",
                     learning_rate=2e-4, bf16=on_gpu, max_grad_norm=0.3, warmup_steps=0.03,
                     lr_scheduler_type="linear", report_to="none",
                     gradient_checkpointing_kwargs={"use_reentrant": False},
                     dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
                     label_names=["labels"], use_cpu=not on_gpu, dataloader_num_workers=0, seed=42)
    train = load_from_disk(str(data))["train"]
    return SFTTrainer(model=model, args=args, train_dataset=train, peft_config=peft_config,
                      processing_class=processor, data_collator=collate_fn)


def medtune_trainer(method: str, checkpoint: Path, data: Path, out: Path, steps: int, overrides: list[str]):
    import torch

    from medtune.config import load_recipe
    from medtune.model import resolve_precision
    from medtune.trainer import build_trainer, sft_config

    recipe = load_recipe(REPO / f"recipes/tissue_classification/{method}.yaml", [
        f"model.name_or_path={checkpoint}", f"data.path={data}", "data.max_train_samples=null",
        f"training.output_dir={out}", f"training.max_steps={steps}", "training.logging_steps=1",
        "training.save_strategy=no", "training.eval_strategy=no", "tracking.backend=none",
        # on a GPU the recipe's loader workers prepare batches while it computes; on a CPU they would only
        # take cores from the model
        *([] if torch.cuda.is_available() else ["training.dataloader_num_workers=0"]), *overrides])
    precision = resolve_precision(recipe.model.precision)
    trainer, _ = build_trainer(recipe, sft_config(recipe, precision, not torch.cuda.is_available()), precision)
    return trainer


def parameter_count(checkpoint: Path) -> int:
    """The model's parameters, counted unquantized (a 4-bit tensor reports half its count): built on the meta
    device, so nothing is allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(checkpoint))
    return sum(p.numel() for p in model.parameters())


def measure(config: str, checkpoint: Path, data: Path, out: Path, steps: int, overrides: list[str] = ()) -> dict:
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import set_seed
    from trl.kernels.chunked_logprob import _use_triton as trl_default

    from medtune.model import VISION_TOWER
    from medtune.trainer import project_labelled_positions_only

    set_seed(42)
    # As TRL does on a GPU, for every configuration: only labelled positions go through the LM head
    project_labelled_positions_only()
    name, *variants = config.split("+")
    trainer = (reference_trainer(checkpoint, data, out, steps) if name == "reference"
               else medtune_trainer(name.removeprefix("medtune-"), checkpoint, data, out, steps,
                                    [*overrides, *(o for v in variants for o in VARIANTS[v])]))
    if "every-position" in variants:
        trl_utils._use_triton = trl_default  # TRL's own choice: on a CPU, every position
    if "tower-in-autograd" in variants:  # without medtune's routing of the tower's forward, the class's runs
        del trainer.model.get_base_model().get_submodule(VISION_TOWER).forward
    counter = _TokenCounter(trainer)
    timing = _timing_callback(counter)
    trainer.add_callback(timing)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, tokens0), (t1, tokens1) = timing.marks[0], timing.marks[-1]
    timed_steps = len(timing.marks) - 1
    trainer.save_model(str(out / "adapter"))
    adapter = sum(p.stat().st_size for p in (out / "adapter").glob("adapter_model*"))
    model = trainer.model
    batch, accumulation = trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps
    result = {
        "config": config, "steps_timed": timed_steps, "batch": f"{batch} x {accumulation}",
        "samples_per_s": timed_steps * batch * accumulation / (t1 - t0),
        "tokens_per_s": (tokens1 - tokens0) / (t1 - t0),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": parameter_count(checkpoint),
        "adapter_mb": adapter / 2**20, "losses": timing.losses,
    }
    if torch.cuda.is_available():
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result["mfu"] = 6 * result["total_params"] * result["tokens_per_s"] / (peak * 1e12) if peak else None
        result["device"] = name
    else:
        result["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        result["mfu"] = None
        result["device"] = f"CPU ({os.cpu_count()} cores)"
    return result


# ----------------------------------------------------------------------------- driving (in the parent)
def prepare_data(workdir: Path) -> Path:
    """The synthetic NCT-CRC-HE-100K stand-in, prepared by data_prep as users prepare the real one."""
    data = workdir / "data"
    if not (data / "dataset_dict.json").is_file():
        from data_prep.crc100k import synthesize

        synthesize(workdir / "raw", seed=0, train_per_class=16, test_per_class=2)
        subprocess.run([sys.executable, "-m", "data_prep", "crc100k", "--src", str(workdir / "raw"), "--out",
                        str(data), "--overwrite"], check=True, cwd=REPO, capture_output=True)
    return data


def data_path(workdir: Path, slices: int) -> Path:
    return workdir / ("data" if slices == 1 else f"data-{slices}-slices")


def series_data(workdir: Path, slices: int, rows: int) -> Path:
    """The stand-in's first `rows` training rows as series of `slices` images (each row's tile repeated): the
    tokens and memory of an example that `data_prep imagefolder --series-slices N` writes."""
    import shutil

    from datasets import DatasetDict, Image, List, load_from_disk

    data, out = data_path(workdir, 1), data_path(workdir, slices)
    if (out / "dataset_dict.json").is_file():
        return out
    splits = load_from_disk(str(data))
    # the stored bytes, repeated without re-encoding (the trainer loads a validation split too: a few rows)
    chosen = {"train": splits["train"].shuffle(seed=0).select(range(rows)),
              "validation": splits["validation"].select(range(min(16, len(splits["validation"]))))}

    def as_series(row):
        user, answer = row["messages"]
        text = [item for item in user["content"] if item["type"] == "text"]
        return {"images": [row["image"]] * slices,
                "messages": [{**user, "content": [{"type": "image", "text": None}] * slices + text}, answer]}

    features = chosen["train"].features.copy()
    del features["image"]
    features["images"] = List(Image())
    DatasetDict({name: split.cast_column("image", Image(decode=False)).map(as_series, remove_columns=["image"],
                                                                            features=features)
                 for name, split in chosen.items()}).save_to_disk(str(out))
    shutil.copy(data / "prep_report.json", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["auto", "real", "scaled"], default="auto")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per configuration (the first untimed)")
    parser.add_argument("--configs", help=f"comma-separated; default: {','.join(CONFIGS)} (on a CPU also "
                        f"{','.join(CPU_ONLY_CONFIGS)}); `sweep`: {','.join(SWEEP)}. Variants: {', '.join(VARIANTS)}")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medtune-train-bench"))
    parser.add_argument("--slices", type=int, default=1, help="images per example (a CT series: 85)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    shape = args.shape if args.shape != "auto" else ("real" if torch.cuda.is_available() else "scaled")
    checkpoint = args.workdir / f"medgemma-{shape}-random"
    if args.child:  # one configuration, in a process of its own
        series = ["training.max_length=null"] if args.slices > 1 else []  # a cut would fall in the image tokens
        result = measure(args.child, checkpoint, data_path(args.workdir, args.slices),
                         args.workdir / "runs" / args.child, args.steps, series)
        print("RESULT " + json.dumps(result))
        return

    configs = (SWEEP if args.configs == "sweep" else args.configs.split(",") if args.configs
               else [*CONFIGS, *(() if torch.cuda.is_available() else CPU_ONLY_CONFIGS)])
    for config in configs:
        name, *variants = config.split("+")
        unknown = [v for v in variants if v not in VARIANTS] + ([] if name in CONFIGS else [name])
        if unknown or (name == "reference" and variants):
            parser.error(f"{config}: unknown {', '.join(unknown) or 'variant of the reference'}")
        if name == "reference" and args.slices > 1:
            parser.error("--slices: the reference notebook's collate_fn takes one image an example")

    from medgemma_shapes import write_checkpoint  # benchmarks/, beside this script

    args.workdir.mkdir(parents=True, exist_ok=True)
    prepare_data(args.workdir)
    if args.slices > 1:
        series_data(args.workdir, args.slices, rows=16 * args.steps)
    write_checkpoint(shape, checkpoint)
    results, failures = [], {}
    for config in configs:
        run = subprocess.run([sys.executable, __file__, "--child", config, "--shape", shape, "--steps", str(args.steps),
                              "--workdir", str(args.workdir), "--slices", str(args.slices)], cwd=REPO,
                             capture_output=True, text=True,
                             env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = next((text for text in run.stdout.splitlines() if text.startswith("RESULT ")), None)
        if line is None:  # one failed variant (a kernel missing, out of memory) must not cost the other rows
            failures[config] = (run.stderr.strip().splitlines() or ["no output"])[-1][:300]
            print(f"{config} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}", file=sys.stderr)
            continue
        results.append(json.loads(line[len("RESULT "):]))
    if not results:
        sys.exit("every configuration failed (see above)")
    print_table(results, failures, shape, args.steps, args.slices)


def print_table(results: list[dict], failures: dict[str, str], shape: str, steps: int, slices: int = 1) -> None:
    import torch

    print(f"date: {time.strftime('%Y-%m-%d')}; device: {results[0]['device']}; shape: {shape}; images an example: "
          f"{slices}; torch "
          f"{torch.__version__}; python {platform.python_version()}")
    print(f"{steps} optimizer steps each, the first untimed; batch = micro-batch x accumulation\n")
    print("| configuration | batch | samples/s | tokens/s | vs reference | peak memory GB | trainable params | "
          "adapter MB | MFU | loss vs plain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_config = {r["config"]: r for r in results}
    base = by_config.get("reference", results[0])["samples_per_s"]
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "—"
        # a variant must train the same: its largest per-step loss difference from the plain recipe's row
        plain = by_config.get(r["config"].split("+")[0])
        same = (f"{max(abs(a - b) for a, b in zip(r['losses'], plain['losses'])):.4f}"
                if plain is not None and plain is not r and r["losses"] else "—")
        print(f"| {r['config']} | {r['batch']} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['samples_per_s'] / base:.2f}x | {r['peak_memory_gb']:.2f} | {r['trainable_params'] / 1e6:.1f} M | "
              f"{r['adapter_mb']:.1f} | {mfu} | {same} |")
    for config, why in failures.items():
        print(f"| {config} | failed: {why} |")
    print("\nloss per optimizer step (the reference's loss covers the prompt too, medtune's the answer only):\n")
    for r in results:
        print(f"- {r['config']}: {r['losses']}")


if __name__ == "__main__":
    main()
