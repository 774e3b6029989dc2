"""Benchmark suites: a YAML file that names benchmarks as data, each with its task, protocol, metric, the command
that prepares its data and the figures published for it (recipes/benchmarks/medgemma-card.yaml: MedGemma's model
card). Loaded and checked completely before anything heavy loads; `medtune/bench.py` runs them.

    name: medgemma-card
    models: {google/medgemma-4b-it: MedGemma 4B IT, ...}    # the published columns, in order
    benchmarks:
      - name: slake                      # its prepared folder is DATA_ROOT/slake unless `data` names another
        task: free_text
        protocol: medgemma-slake         # the prompt asked and the answer form read (the task's protocols)
        protocols: {google/medgemma-1.5-4b-it: medgemma-1.5}   # another for some base models (optional)
        metric: token_f1                 # the headline: the published figures are of it
        metrics: [closed_accuracy]       # more of the task's metrics shown beside it (optional)
        mode: generate                   # or score (option scoring: fast, not the card's protocol)
        max_new_tokens: 512              # optional: the task's protocol default otherwise
        split: test
        dataset: BoKelvin/SLAKE          # the dataset's Hub id (the model card's model-index)
        prepare: python -m data_prep slake --src SLAKE --out {data}
        published: {google/medgemma-4b-it: 72.3, ...}       # in percent, as the card prints them
        source: MedGemma 4B IT model card; MedGemma technical report (arXiv 2507.05201) Table 9

A recipe's `eval.benchmarks` names a suite file, or a list of benchmark names from the card's suite.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.errors import RecipeError

REPO_ROOT = Path(__file__).resolve().parents[1]
CARD_SUITE = REPO_ROOT / "recipes" / "benchmarks" / "medgemma-card.yaml"
MODES = ("generate", "score")


@dataclass(frozen=True)
class Benchmark:
    name: str
    task: str
    metric: str
    prepare: str
    protocol: str | None = None
    protocols: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    mode: str = "generate"
    max_new_tokens: int | None = None
    split: str = "test"
    data: str | None = None
    dataset: str | None = None
    published: dict = field(default_factory=dict)
    source: str = ""

    def protocol_for(self, model: str) -> str | None:
        """The protocol asked of `model` (a base model's Hub id): its own where the suite names one."""
        return self.protocols.get(model, self.protocol)

    def folder(self, data_root: Path) -> Path:
        return Path(data_root) / (self.data or self.name)

    def prepare_command(self, data_root: Path) -> str:
        return self.prepare.format(data=self.folder(data_root))

    @property
    def card_protocol(self) -> bool:
        """Whether its figures are comparable with the published ones: greedy generation with the card's prompts."""
        return self.mode == "generate" and bool(self.published)


@dataclass(frozen=True)
class Suite:
    name: str
    benchmarks: tuple[Benchmark, ...]
    models: dict = field(default_factory=dict)  # published model id -> its column title
    source: str = ""

    def only(self, names: list[str]) -> "Suite":
        known = {b.name: b for b in self.benchmarks}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise RecipeError("eval.benchmarks", f"no benchmark {unknown[0]!r} in {self.source} (it has "
                                                 f"{', '.join(known)})")
        return dataclasses.replace(self, benchmarks=tuple(known[n] for n in names))


def load_suite(path: str | Path, key: str = "suite") -> Suite:
    """The suite in `path`, every entry checked (a known task and protocol, a metric the task reports, a mode the
    task supports, the prepare command with its {data}); problems are RecipeErrors naming `key` and the entry."""
    from medtune.config import load_yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(key, f"suite file {str(path)!r} not found (the card's: {CARD_SUITE.relative_to(REPO_ROOT)})")
    raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("benchmarks"), list) or not raw["benchmarks"]:
        raise RecipeError(key, f"{path} must hold `benchmarks:`, a list of entries (name, task, metric, prepare, ...)")
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in raw["benchmarks"]]
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated:
        raise RecipeError(key, f"{path}: two benchmarks are named {repeated!r}")
    benchmarks = tuple(_benchmark(entry, f"{key} {path.name}[{i}]") for i, entry in enumerate(raw["benchmarks"]))
    models = raw.get("models") or {}
    if not isinstance(models, dict):
        raise RecipeError(key, f"{path}: `models` maps a published model's id to its column title")
    return Suite(name=str(raw.get("name") or path.stem), benchmarks=benchmarks, models=models, source=str(path))


def _benchmark(entry: Any, where: str) -> Benchmark:
    from medtune.recipe_checks import suggest
    from medtune.tasks import is_multiple_choice, task_names

    if not isinstance(entry, dict):
        raise RecipeError(where, "must be a mapping (name, task, metric, prepare, ...)")
    known = {f.name for f in dataclasses.fields(Benchmark)}
    unknown = [k for k in entry if k not in known]
    if unknown:
        raise RecipeError(f"{where}.{unknown[0]}", f"unknown key{suggest(unknown[0], known)}; an entry takes: "
                                                   f"{', '.join(sorted(known))}")
    missing = [k for k in ("name", "task", "metric", "prepare") if not entry.get(k)]
    if missing:
        raise RecipeError(f"{where}.{missing[0]}", "missing")
    where = f"{where} ({entry['name']})"
    if entry["task"] not in task_names():
        raise RecipeError(f"{where}.task", f"unknown task {entry['task']!r}{suggest(entry['task'], task_names())}")
    if "{data}" not in entry["prepare"]:
        raise RecipeError(f"{where}.prepare", "the command that prepares it, with {data} where its folder goes")
    if entry.get("mode", "generate") not in MODES:
        raise RecipeError(f"{where}.mode", f"{entry['mode']!r} is not one of {', '.join(MODES)}")
    for mapping, kind, example in (("protocols", str, "medgemma-1.5"), ("published", (int, float), "72.3")):
        value = entry.get(mapping, {})
        if not isinstance(value, dict) or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                  for v in value.values()):
            raise RecipeError(f"{where}.{mapping}", f"must map a model's Hub id to a value such as {example}")
    if not isinstance(entry.get("metrics", []), list) or not all(isinstance(m, str) for m in entry.get("metrics", [])):
        raise RecipeError(f"{where}.metrics", "a list of the task's metrics, e.g. [closed_accuracy]")
    budget = entry.get("max_new_tokens")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise RecipeError(f"{where}.max_new_tokens", f"{budget!r}: a whole number of tokens, at least 1")
    for key in ("name", "task", "metric", "prepare", "protocol", "split", "data", "dataset", "source"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise RecipeError(f"{where}.{key}", f"{entry[key]!r}: must be text")
    benchmark = Benchmark(**entry)
    task = task_of(benchmark)
    for protocol in {benchmark.protocol, *benchmark.protocols.values()} - {None}:
        if protocol not in getattr(task, "protocols", ()):
            raise RecipeError(f"{where}.protocol", f"{benchmark.task} has no protocol {protocol!r}; it has "
                                                   f"{', '.join(getattr(task, 'protocols', ()))}")
    if benchmark.metric not in task.table_metrics:  # `metrics` may name a finding's or class's own (f1_edema)
        raise RecipeError(f"{where}.metric", f"{benchmark.task} reports no {benchmark.metric!r}; it reports "
                                             f"{', '.join(task.table_metrics)}")
    if benchmark.mode == "score" and not is_multiple_choice(task):
        raise RecipeError(f"{where}.mode", f"score needs a multiple-choice task; {benchmark.task} is scored by "
                                           "generation")
    return benchmark


def task_of(benchmark: Benchmark):
    """The benchmark's task as far as the suite alone can tell (a generic task's findings or classes come from the
    prepared data: stand-ins here, for what does not depend on them: its protocols, headline metric and kind)."""
    from medtune.tasks import get_task

    try:
        return get_task(benchmark.task)
    except ValueError:  # a task shaped by its data's findings or classes
        return get_task(benchmark.task, None, {"stand_in": "stand-in"})


def suite_of(setting: str | list | None) -> Suite | None:
    """A recipe's `eval.benchmarks` as a suite: a suite file, or names of the card's benchmarks."""
    if setting is None:
        return None
    if isinstance(setting, str):
        return load_suite(setting, "eval.benchmarks")
    if isinstance(setting, list) and setting and all(isinstance(n, str) for n in setting):
        return load_suite(CARD_SUITE, "eval.benchmarks").only(setting)
    raise RecipeError("eval.benchmarks", "a suite file (recipes/benchmarks/medgemma-card.yaml), or a list of its "
                                         "benchmarks' names, e.g. [medqa, slake]")
