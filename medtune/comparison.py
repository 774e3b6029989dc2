"""The out-of-box against fine-tuned table of a run (with the SFT adapter between them, for a GRPO run that started
from one): its rows (one per metric of the task), the reasons a metric
is missing, eval/comparison.md, and the tracker's copy of the evaluation. Written once, on the main process,
after `medtune.evaluation` has scored both models.
"""
from __future__ import annotations

from medtune import run_folder
from medtune.config import Recipe
from medtune.thinking import TRACE_METRICS

COMPARISON_COLUMNS = ["task", "metric", "out-of-box", "fine-tuned"]
SFT_COLUMN = "SFT adapter"  # a GRPO run's starting point (eval/sft.json), between out-of-box and fine-tuned


def comparison_columns(results: dict[str, dict]) -> list[str]:
    """The table's columns: the SFT adapter's where the run evaluated one (GRPO from an SFT run)."""
    return [*COMPARISON_COLUMNS[:3], SFT_COLUMN, *COMPARISON_COLUMNS[3:]] if results.get("sft") \
        else COMPARISON_COLUMNS


def comparison_rows(task, baseline: dict | None, finetuned: dict | None, sft: dict | None = None) -> list[list[str]]:
    """task | metric | out-of-box | [SFT adapter |] fine-tuned, one row per metric of the task (the paper's first)."""
    def cell(result, key):
        value = result["metrics"].get(key) if result else None
        return "—" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))

    models = [baseline, *([sft] if sft else []), finetuned]
    shown = [*task.table_metrics, *(key for key in TRACE_METRICS if any(r and key in r["metrics"] for r in models))]
    return [[task.name, key, *(cell(r, key) for r in models)] for key in shown]


def unavailable_notes(task, *results: dict | None) -> list[str]:
    """Why a table metric is missing (`<metric>_unavailable` in the metrics), once per metric and reason."""
    notes = {f"{key} unavailable: {r['metrics'][key + '_unavailable']}"
             for r in results if r for key in task.table_metrics if r["metrics"].get(key + "_unavailable")}
    return sorted(notes)


def comparison_table(rows: list[list[str]], notes: list[str] = (), columns: list[str] = COMPARISON_COLUMNS) -> str:
    """The comparison rows as a markdown table, with the reasons for missing metrics under it."""
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ([""] + [f"- {note}" for note in notes] if notes else [])) + "\n"


BENCHMARKS_HEADING = "### Benchmarks"


def report_results(recipe: Recipe, task, results: dict[str, dict], test_set, benchmarks: dict | None = None) -> str:
    """eval/comparison.md (out-of-box against fine-tuned, and the benchmarks of `eval.benchmarks` where they ran)
    and the tracker's copy of the evaluation; the table."""
    from medtune import tracking

    eval_dir = run_folder.eval_dir(recipe.output_dir)
    rows = comparison_rows(task, results.get("baseline"), results.get("finetuned"), results.get("sft"))
    columns = comparison_columns(results)
    table = comparison_table(rows, unavailable_notes(task, *results.values()), columns)
    if benchmarks is not None:
        from medtune.bench_results import read_results

        _, bench_table = read_results(recipe.output_dir)
        table += (f"\n{BENCHMARKS_HEADING} (suite {benchmarks['suite']}, each with its protocol; published and "
                  f"measured figures in percent)\n\n{bench_table}")
    eval_dir.mkdir(parents=True, exist_ok=True)
    run_folder.comparison_path(recipe.output_dir).write_text(table, encoding="utf-8")
    tracking.log_evaluation(recipe, results, columns, rows, table, eval_dir, test_set, benchmarks)
    return table
