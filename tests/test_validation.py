"""Validation on the task's metric for report generation: greedy generation on `eval.validation_generations`
reports, and checkpoints compared on ROUGE-L when RadGraph is unavailable (offline here), saying why."""
from __future__ import annotations

from transformers import set_seed

from medtune.config import load_recipe
from medtune.evaluation import validation_metrics
from medtune.tasks import get_task
from medtune.trainer import build_trainer, sft_config
from tests.conftest import REPO


def test_report_validation_generates_a_few_reports_and_selects_on_rouge_without_radgraph(small_mimic, tmp_path,
                                                                                       capsys):
    set_seed(0)
    recipe = load_recipe(REPO / "recipes/demo/report_generation.yaml", [
        f"data.path={small_mimic / 'data'}", f"training.output_dir={tmp_path}", "training.eval_strategy=steps",
        "training.eval_steps=1", "training.save_strategy=steps", "training.save_steps=1", "training.max_steps=1",
        "tracking.backend=none", "eval.validation_generations=2", "eval.max_new_tokens=8", "eval.num_workers=0"])
    args = sft_config(recipe, "fp32", on_cpu=True)
    assert args.metric_for_best_model == "eval_radgraph_f1" and args.load_best_model_at_end
    trainer, processor = build_trainer(recipe, args, "fp32")

    metrics = validation_metrics(trainer.model, processor, trainer.eval_dataset, get_task("report_generation"),
                                 recipe.eval)
    assert metrics["n"] == 2 and isinstance(metrics["rouge_l"], float)
    assert "radgraph_f1" not in metrics and metrics["radgraph_f1_unavailable"]

    trainer.train()  # one step, one validation: the choice of checkpoint moves to ROUGE-L, once, with the reason
    assert trainer.args.metric_for_best_model == "eval_rouge_l"
    assert "checkpoints are compared on eval_rouge_l: radgraph_f1 is unavailable" in capsys.readouterr().out
    validated = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert validated and "eval_rouge_l" in validated[0] and trainer.state.best_global_step == 1

