"""medtune: fine-tune MedGemma 4B IT on medical image tasks with LoRA/QLoRA recipes.

The modules by stage, as the data flows (raw download -> data_prep -> train -> evaluate -> export):

    recipe        config (the schema and `load_recipe`), recipe_checks (across sections and against the data),
                  sft_fields (SFTConfig's keys, read without importing TRL)
    tasks/        one plug-in per task: prompt, answer parsing, metrics (the `Task` protocol)
    data          data (the prepared splits), rows (a row's images), prompts (chat template or plain form),
                  pixels (images as uint8 at the model's size, normalised on its device), collator,
                  shared_prefix (several questions about one image packed into one sequence)
    model         model (load, quantize, LoRA, the frozen tower out of autograd), tiny (offline twins)
    train         train (`run`, `main`), trainer (arguments, TRL's SFTTrainer with the task's metrics),
                  grpo (training.method: grpo, TRL's GRPOTrainer), rewards (GRPO's, from the task's own metric),
                  checkpoints, callbacks
    evaluate      evaluation (every rank), inference (batched generation and option scoring), comparison (the
                  out-of-box against fine-tuned table), thinking (MedGemma 1.5's traces)
    benchmarks    suite (a YAML of benchmarks), bench (`medtune bench`: a suite on a model and its adapters),
                  bench_results (results.json and the table), bootstrap (paired intervals)
    record        run_folder (a run's files, named once), run_info, tracking (wandb, tensorboard)
    export        model_card, export (merge, Hub upload)
    families      medsiglip (what sets MedSigLIP apart), encoder and embeddings (its zero-shot, probe and LoRA
                  runs)
    commands      cli (`medtune ...`), sweep, compare, inspect_batch; errors (one-line messages)

data_prep/ (outside this package) turns each dataset's raw layout into the DatasetDict `train` reads.
"""
__version__ = "0.1.0"
