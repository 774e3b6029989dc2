"""A benchmark suite's results (medtune/bench.py writes them): OUT/bench/results.json, the numbers, and
OUT/bench/table.md, the table that puts them beside the published figures; read back by the comparison and the
model card of a training run that ran `eval.benchmarks`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.suite import Suite

BENCH_DIR, RESULTS, TABLE = "bench", "results.json", "table.md"


def percent(value) -> str:
    """A 0-1 metric as the card prints it (72.3), a count as it is, a missing one as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return str(value)


def bench_table(suite: Suite, results: dict[str, Any]) -> str:
    """benchmark | n | metric | the card's published figures | each model measured | each adapter minus the base
    model with its 95% interval (a regression marked); the missing benchmarks and their commands under it."""
    labels = list(dict.fromkeys(label for measured in results["benchmarks"].values() for label in measured))
    differences = results.get("differences", {})
    adapters = list(dict.fromkeys(a for per in differences.values() for a in per))
    columns = ["benchmark", "n", "metric", *suite.models.values(), *labels,
               *(f"{a} − {labels[0]} (95% CI)" for a in adapters)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    notes = []
    for benchmark in suite.benchmarks:
        measured = results["benchmarks"].get(benchmark.name)
        if measured is None:
            continue
        n = next(iter(measured.values()))["n"] if measured else 0
        mark = "" if benchmark.card_protocol else " †"
        for i, metric in enumerate((benchmark.metric, *benchmark.metrics)):
            published = [f"{benchmark.published[m]:.1f}" if i == 0 and m in benchmark.published else "—"
                         for m in suite.models]
            cells = [benchmark.name + mark if i == 0 else "", f"{n:,}" if i == 0 else "", metric, *published,
                     *(percent(measured.get(label, {}).get(metric)) for label in labels)]
            cells += [_difference_cell(differences.get(benchmark.name, {}).get(a)) if i == 0 else ""
                      for a in adapters]
            lines.append("| " + " | ".join(cells) + " |")
    if any(not b.card_protocol for b in suite.benchmarks if b.name in results["benchmarks"]):
        notes.append("† not the card's protocol (option scoring, or no published figure): not comparable with the card")
    for name, protocol in results.get("protocols", {}).items():
        if protocol.get("protocol"):
            notes.append(f"{name}: protocol {protocol['protocol']}, {protocol['mode']}")
    notes += results.get("notes", [])
    for name, command in results.get("missing", {}).items():
        notes.append(f"{name}: not prepared — `{command}`")
    for name, why in results.get("skipped", {}).items():
        notes.append(f"{name}: not run — {why}")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def _difference_cell(difference: dict[str, Any] | None) -> str:
    if not difference:
        return "—"
    cell = (f"{100 * difference['difference']:+.1f} ({100 * difference['low']:+.1f}, "
            f"{100 * difference['high']:+.1f})")
    return cell + (" ▼ regression" if difference["regression"] else "")


def write_results(bench_dir: Path, suite: Suite, results: dict[str, Any]) -> str:
    bench_dir.mkdir(parents=True, exist_ok=True)
    table = bench_table(suite, results)
    (bench_dir / RESULTS).write_text(json.dumps(results, indent=2), encoding="utf-8")
    (bench_dir / TABLE).write_text(table, encoding="utf-8")
    return table


def read_results(out_dir: Path) -> tuple[dict[str, Any], str] | None:
    """A run's benchmark results and table, where it ran a suite."""
    from medtune.run_folder import read_json

    bench_dir = Path(out_dir) / BENCH_DIR
    results = read_json(bench_dir / RESULTS)
    if not results or not (bench_dir / TABLE).is_file():
        return None
    return results, (bench_dir / TABLE).read_text(encoding="utf-8")
