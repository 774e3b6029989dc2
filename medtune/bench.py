"""Run a benchmark suite (medtune/suite.py) on a base model and on adapters of it, with each benchmark's protocol,
and put the measured figures beside the published ones.

    medtune bench recipes/benchmarks/medgemma-card.yaml --model google/medgemma-4b-it --adapter outputs/run [...]
    accelerate launch medtune/bench.py SUITE --model ID_OR_DIR [--adapter DIR ...] [--data-root data] [--out DIR]

Each benchmark's prepared folder is DATA_ROOT/<its name>; one that is not prepared is listed with the command that
prepares it, and the others still run. Every model is evaluated by `medtune.evaluation.evaluate`, the entry a
training run's final evaluation uses, on every rank; files go to OUT/bench/<benchmark>/<model label>.json (with
predictions), and OUT/bench/results.json and OUT/bench/table.md hold the suite: per benchmark and model the
metrics with n, each adapter's difference from the base model with a paired 95% bootstrap interval over the same
examples, and a regression wherever that interval lies below zero. A benchmark a model has already been evaluated
on (same model, protocol and examples) is read back, not run again: an interrupted suite resumes.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script (accelerate launch medtune/bench.py): as medtune/train.py does
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

from medtune.errors import MedtuneError  # noqa: E402
from medtune.bench_results import BENCH_DIR, bench_table, write_results  # noqa: E402
from medtune.served import DEFAULT_IN_FLIGHT  # noqa: E402
from medtune.suite import Benchmark, Suite  # noqa: E402

DEFAULT_DATA_ROOT = "data"


@dataclass
class Variant:
    """A model to evaluate: its label in the table and how to make the loaded model be it (an adapter switched on,
    or all adapters off for the base model)."""
    label: str
    active: Callable[[], Any]  # a context manager factory
    is_base: bool = False
    # which weights: a result is read back only for the same ones (an adapter retrained into the same folder is
    # measured anew); empty for the base model, named by its id
    fingerprint: str = ""
    served: Any = None  # a medtune.served.Server: the model is asked through it, not loaded

    def model_label(self, base_model: str) -> str:
        if self.served is not None:
            return self.served.label
        label = base_model if self.is_base else f"{base_model} + {self.label}"
        return f"{label} [{self.fingerprint}]" if self.fingerprint else label


# ----------------------------------------------------------------------------- running
def run_suite(model, processor, suite: Suite, data_root: Path, out_dir: Path, variants: list[Variant],
              base_model: str, settings, limit: int | None = None) -> dict[str, Any] | None:
    """Every benchmark of `suite` on every variant of `model` (all ranks take part); returns the suite's results on
    the main process (None elsewhere), and writes OUT/bench/results.json and table.md."""
    from accelerate import PartialState

    from medtune.model_card import hub_base_model

    state = PartialState()
    bench_dir = Path(out_dir) / BENCH_DIR
    model_id = hub_base_model(base_model) or base_model  # whose protocol: MedGemma 1.5 is asked its own way
    results: dict[str, Any] = {"suite": suite.name, "source": suite.source, "model": base_model,
                               "data_root": str(data_root), "benchmarks": {}, "protocols": {}, "missing": {},
                               "skipped": {}, "notes": []}
    if getattr(getattr(model, "config", None), "quantization_config", None) is not None:
        results["notes"].append("measured on the quantized (4-bit) base model: the published figures are of bf16")
    for benchmark in suite.benchmarks:
        prepared = _prepared(benchmark, Path(data_root), processor, model_id)
        if isinstance(prepared, str):
            kind = "missing" if prepared.startswith("python -m") else "skipped"
            results[kind][benchmark.name] = prepared
            continue
        dataset, task = prepared
        if limit is not None and limit < len(dataset):
            dataset = dataset.shuffle(seed=0).select(range(limit))
        protocol = task.protocol if len(getattr(task, "protocols", ())) > 1 else None
        results["protocols"][benchmark.name] = {"task": benchmark.task, "kind": task.kind, "protocol": protocol,
                                                "mode": benchmark.mode, "metric": benchmark.metric,
                                                "split": benchmark.split, "dataset": benchmark.dataset}
        eval_settings = _settings(settings, benchmark, task)
        measured = {}
        for variant in variants:
            label = variant.model_label(base_model)
            result = _reuse(bench_dir / benchmark.name, variant.label, label, protocol, len(dataset), eval_settings)
            if result is None:
                with variant.active():
                    result = _evaluate(variant.served or model, processor, dataset, task, eval_settings,
                                       variant.label, bench_dir / benchmark.name, label)
            if result is not None:
                measured[variant.label] = result
        if state.is_main_process:
            results["benchmarks"][benchmark.name] = {
                label: {"n": r["n"], **{k: r["metrics"].get(k) for k in (benchmark.metric, *benchmark.metrics)}}
                for label, r in measured.items()}
            results.setdefault("differences", {})[benchmark.name] = _differences(
                task, benchmark, bench_dir / benchmark.name, variants)
    if not state.is_main_process:
        return None
    write_results(bench_dir, suite, results)
    return results


def _prepared(benchmark: Benchmark, data_root: Path, processor, model_id: str):
    """(the split to evaluate, the benchmark's task), or why not: the command that prepares it (missing data), or a
    reason it cannot run here (data prepared for another task, a text-only model and image questions)."""
    from datasets import load_from_disk

    from medtune.recipe_checks import prep_report
    from medtune.rows import images_per_row, takes_images
    from medtune.tasks import get_task

    folder = benchmark.folder(data_root)
    if not (folder / "dataset_dict.json").is_file():
        return benchmark.prepare_command(data_root)
    prepared = prep_report(folder).get("task") or {}
    if prepared.get("name", benchmark.task) != benchmark.task:
        return f"{folder} was prepared for {prepared.get('name')}, not {benchmark.task}: prepare it again with " \
               f"`{benchmark.prepare_command(data_root)}`"
    splits = load_from_disk(str(folder))
    if benchmark.split not in splits:
        return f"{folder} has no {benchmark.split} split: prepare it again"
    dataset = splits[benchmark.split]
    if images_per_row(dataset) and not takes_images(processor):
        return "a text-only model: its questions show images"
    task = get_task(benchmark.task, prepared.get("question"), prepared.get("options"),
                    benchmark.protocol_for(model_id))
    if len(dataset) and hasattr(task, "conversations"):
        try:  # data prepared before rows kept their question cannot be asked under a benchmark's protocol
            task.conversations(dataset[0])
        except MedtuneError as e:
            return f"{e} (`{benchmark.prepare_command(data_root)}`)"
    return dataset, task


def _settings(settings, benchmark: Benchmark, task):
    """The recipe's eval settings (batch size, loader workers) with the benchmark's split, mode and budget: the
    suite's, else its protocol's; a recipe's eval.max_new_tokens caps it (a quick look: the card's figures need the
    protocol's budget)."""
    import dataclasses

    budget = benchmark.max_new_tokens or task.max_new_tokens
    if settings.max_new_tokens:
        budget = min(budget, settings.max_new_tokens)
    return dataclasses.replace(settings, split=benchmark.split, mode=benchmark.mode, max_new_tokens=budget)


def _evaluate(model, processor, dataset, task, settings, name: str, out_dir: Path, label: str):
    from medtune.evaluation import evaluate

    return evaluate(model, processor, dataset, task, settings, name=name, out_dir=out_dir, model_label=label)


def _reuse(folder: Path, name: str, label: str, protocol: str | None, n: int, settings) -> dict[str, Any] | None:
    """The result already written for this model (the same weights) on this benchmark, when it was made the same
    way: protocol, examples, mode and token budget (an interrupted suite resumes). Decided on the main process and
    told to the others, so that every rank does the same."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from medtune.run_folder import read_json, result_file

    found = None
    if PartialState().is_main_process:
        result = read_json(folder / result_file(name))
        decoding = (result or {}).get("decoding", {})
        if result and result.get("model") == label and result.get("n") == n and decoding.get("protocol") == protocol \
                and decoding.get("mode") == settings.mode and decoding.get("max_new_tokens") == (
                    settings.max_new_tokens if settings.mode == "generate" else None):
            found = result
    return broadcast_object_list([found])[0]


def _differences(task, benchmark: Benchmark, folder: Path, variants: list[Variant]) -> dict[str, Any]:
    """Each adapter against the base model on the benchmark's metric, paired over the same examples."""
    from medtune.bootstrap import paired_difference
    from medtune.run_folder import predictions_file

    def records(label: str) -> list[dict[str, Any]]:
        path = folder / predictions_file(label)
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []

    base = next((v for v in variants if v.is_base), None)
    if base is None:
        return {}
    base_records = records(base.label)
    return {v.label: paired_difference(task, benchmark.metric, base_records, records(v.label))
            for v in variants if not v.is_base}


# ----------------------------------------------------------------------------- stand-ins
def prepare_stand_ins(suite: Suite, data_root: Path, raw_root: Path) -> None:
    """Each benchmark's synthetic stand-in (`data_prep synthetic`: its publisher's layout, small), written once a
    reader into RAW_ROOT/<reader>, then prepared into DATA_ROOT by the suite's own `prepare` command with --src
    pointed at it: offline tests and measurements run the commands a user runs. The command runs from the
    stand-in's folder, where the files it names relative to a download (Google's split files) are."""
    import shlex
    import subprocess

    from data_prep import get_reader

    for benchmark in suite.benchmarks:
        if (benchmark.folder(data_root) / "dataset_dict.json").is_file():  # prepared (or shared: `data`)
            continue
        words = shlex.split(benchmark.prepare_command(data_root))
        reader = words[words.index("data_prep") + 1]
        raw = Path(raw_root) / reader
        if not raw.exists():
            get_reader(reader).synthesize(raw)
        words[words.index("--src") + 1] = str(raw)
        done = subprocess.run([sys.executable, *words[1:]], cwd=raw, capture_output=True, text=True)
        if done.returncode != 0:
            raise MedtuneError(f"{benchmark.name}: `{' '.join(words)}` failed: {done.stderr.strip()[-1000:]}")


# ----------------------------------------------------------------------------- the command
def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="medtune bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", type=Path, help="a suite YAML, e.g. recipes/benchmarks/medgemma-card.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value of a recipe: model.precision=bf16, "
                                                     "quantization.load_in_4bit=true, eval.batch_size=32, ...")
    parser.add_argument("--model", default="google/medgemma-4b-it", help="the base model: a Hub id, a folder, or "
                                                                         "`tiny` (offline)")
    parser.add_argument("--adapter", type=Path, action="append", default=[],
                        help="an adapter of the base model (a training run's output_dir); repeatable")
    parser.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT),
                        help="where each benchmark's prepared folder is (DATA_ROOT/<name>)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"), help="results go to OUT/bench/")
    parser.add_argument("--only", help="these benchmarks of the suite (comma-separated)")
    parser.add_argument("--limit", type=int, help="at most N examples a benchmark (a seeded sample): a quick look")
    parser.add_argument("--served", metavar="URL", help="ask models an OpenAI-compatible server serves (vLLM, ...) "
                                                        "instead of loading them; --model still names the base model "
                                                        "(its processor and protocol)")
    parser.add_argument("--served-model", metavar="NAME", action="append", default=[],
                        help="a served model's name; repeatable: the first is the base model, each later one an "
                             "adapter of it the server serves (vLLM --lora-modules NAME=DIR)")
    parser.add_argument("--requests-in-flight", type=int, default=DEFAULT_IN_FLIGHT,
                        help=f"requests sent at once (default {DEFAULT_IN_FLIGHT})")
    return parser


def served_variants(args, processor) -> list[Variant]:
    """The variants of a served suite: the first served model as the base, the others as its adapters."""
    from medtune.served import connect_all

    servers = connect_all(args.served, args.served_model, processor, args.adapter, args.requests_in_flight)
    labels: list[str] = []
    for server in servers:  # two exports' `.../merged` are two models
        label = f"served-{Path(server.model).name or 'model'}"
        labels.append(label if label not in labels else f"{label}-{len(labels) + 1}")
    return [Variant(label, nullcontext, is_base=i == 0, served=server)
            for i, (label, server) in enumerate(zip(labels, servers))]


def bench_recipe(args):
    """A recipe for loading the model (its model, quantization and eval sections), from --model and overrides."""
    from medtune.config import build_recipe, parse_override

    raw: dict[str, Any] = {"model": {"name_or_path": args.model}, "tracking": {"backend": "none"},
                           "training": {"output_dir": str(args.out)}}
    for text in args.overrides:
        (section, key), value = parse_override(text)
        if section not in ("model", "quantization", "eval"):
            raise MedtuneError(f"{section}.{key}: medtune bench takes model.*, quantization.* and eval.* settings")
        raw.setdefault(section, {})[key] = value
    return build_recipe(raw)


def variants_of(model, adapters: list[Path]):
    """(the model with the adapters loaded, their variants: the base model first)."""
    labels: list[str] = []
    for adapter in adapters:
        if not (adapter / "adapter_config.json").is_file():
            raise MedtuneError(f"--adapter {adapter} holds no adapter_config.json")
        label = adapter.resolve().name
        labels.append(label if label not in ("base", *labels) else f"{label}-{len(labels) + 1}")
    if not adapters:
        return model, [Variant("base", nullcontext, is_base=True)]
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name=labels[0])
    for adapter, label in zip(adapters[1:], labels[1:]):
        model.load_adapter(str(adapter), adapter_name=label)

    def switched_to(label: str):
        def active():
            model.set_adapter(label)
            return nullcontext()
        return active

    return model, [Variant("base", model.disable_adapter, is_base=True),
                   *(Variant(label, switched_to(label), fingerprint=adapter_fingerprint(adapter))
                     for adapter, label in zip(adapters, labels))]


def adapter_fingerprint(adapter: Path) -> str:
    """Which weights an adapter folder holds now: its weight files' sizes and modification times, hashed."""
    import hashlib

    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(adapter).glob("adapter_model*"))]
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:12]


def check_adapter_bases(adapters: list[Path], model: str) -> None:
    """An adapter trained on another base model is refused in one line (before anything loads): its figures would
    mean nothing. Compared where both are known by a Hub id."""
    from medtune.model_card import hub_base_model

    ours = hub_base_model(model) or model
    for adapter in adapters:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")) \
            if (adapter / "adapter_config.json").is_file() else {}
        theirs = config.get("base_model_name_or_path") or ""
        if "/" in ours and "/" in theirs and not Path(theirs).exists() and theirs != ours:
            raise MedtuneError(f"--adapter {adapter} was trained on {theirs}, not {ours}: pass --model {theirs}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may follow options (`SUITE --model tiny eval.batch_size=4`): the key=value words left over
    args, extra = parser.parse_known_args(argv)
    if any(e.startswith("-") or "=" not in e for e in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides += extra
    try:
        from medtune.suite import load_suite

        suite = load_suite(args.suite, "suite")  # checked before anything heavy loads
        if args.only:
            suite = suite.only([name.strip() for name in args.only.split(",") if name.strip()])
        recipe = bench_recipe(args)
        check_adapter_bases(args.adapter, recipe.model.name_or_path)
        import torch
        from accelerate import PartialState

        # the ranks' shared state, made first: on a CPU machine a launch's ranks only form one group when asked
        # for the CPU (as medtune/train.py does); every later PartialState() is this one
        PartialState(cpu=not torch.cuda.is_available())
        from medtune.model import load_model, load_processor, resolve_precision

        processor = load_processor(recipe)
        if args.served:
            model, variants = None, served_variants(args, processor)
        else:
            model = load_model(recipe, resolve_precision(recipe.model.precision))
            model, variants = variants_of(model, args.adapter)
        results = run_suite(model, processor, suite, args.data_root, args.out, variants,
                            recipe.model.name_or_path, recipe.eval, args.limit)
    except MedtuneError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"medtune: {e}", file=sys.stderr)
        return 2
    if results is not None:
        print(bench_table(suite, results))
        print(f"written to {args.out / BENCH_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
