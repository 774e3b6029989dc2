"""benchmarks/table13.sh's plumbing on the three stand-ins with the tiny model: each task prepared from its raw
layout, trained, evaluated out-of-box and fine-tuned, and one table beside the report's figures; a second call
finds everything done. (The figures themselves need the real data and a GPU.)"""
from __future__ import annotations

from tests.conftest import run_cli

QUICK = ["model.name_or_path=tiny", "training.max_steps=1", "training.eval_strategy=no", "training.save_strategy=no",
         "training.dataloader_num_workers=0", "tracking.backend=none", "data.max_test_samples=4",
         "eval.max_new_tokens=8", "eval.num_workers=0"]


def test_table13_runs_the_three_tasks_from_their_raw_downloads(small_crc, small_siim, small_mimic, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for reader, root in (("crc100k", small_crc), ("siim_acr", small_siim), ("mimic_cxr", small_mimic)):
        (raw / reader).symlink_to(root / "raw")
    work = tmp_path / "work"
    result = run_cli("bash", "benchmarks/table13.sh", str(raw), str(work), "--", *QUICK, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (work / "table13.md").read_text()
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[3:-1]
            for line in table.splitlines() if line.startswith("| ") and not line.startswith("| task")}
    assert set(rows) == {("tissue_classification", "weighted_f1"), ("pneumothorax", "f1"),
                         ("pneumothorax", "accuracy"), ("report_generation", "radgraph_f1")}
    assert [c.strip() for c in rows[("tissue_classification", "weighted_f1")][:2]] == ["32.8", "94.5"]
    for key in [("tissue_classification", "weighted_f1"), ("pneumothorax", "f1"), ("pneumothorax", "accuracy")]:
        out_of_box, fine_tuned = (float(c) for c in rows[key][2:4])  # medtune's, in percent
        assert 0 <= out_of_box <= 100 and 0 <= fine_tuned <= 100
    assert "medgemma-4b-pt" in table
    again = run_cli("bash", "benchmarks/table13.sh", str(raw), str(work), "--", *QUICK)
    assert again.returncode == 0 and "training and evaluating" not in again.stdout and "preparing" not in again.stdout
    assert (work / "table13.md").read_text() == table
