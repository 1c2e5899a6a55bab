"""Reports: results table (mean ± std over seeds), learning curves, method comparison, logit views, eval plots."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import statistics

import matplotlib.image
import pytest
from conftest import REPO, digits_opts, load_script
from test_cli import call_tool

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1)


def assert_png(path: str) -> None:
    """A valid, non-empty, non-blank PNG that matplotlib reads back."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, image.shape
    assert image[..., :3].std() > 0.01, f"{path} is blank"


def load_tool(name: str):
    """Import tools/<name>.py as a module (its main() runs in this process: no second torch import)."""
    return load_script(f"tools/{name}.py", f"kdlab_tools_{name}")


def run_main(tool: str, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert load_tool(tool).main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[dict]:
    """Two 2-epoch digits runs (the 7.5 K-parameter student architecture, trained vanilla; 6 steps an epoch)."""
    from kdlab.config import load_cfg
    from kdlab.engine.run import train

    prefix = str(tmp_path_factory.mktemp("report_runs"))
    cfg_path = os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml")
    summaries = []
    for seed in SEEDS:
        opts = digits_opts(prefix, epochs=2, **{"EXPERIMENT.SEED": seed, "EXPERIMENT.NAME": f"seed{seed}",
                                                "DISTILLER.STUDENT": "digits_student", "SOLVER.BATCH_SIZE": 256})
        summaries.append(train(load_cfg(cfg_path, opts)))
    for s in summaries:
        s["prefix"] = prefix
    return summaries


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("report"))
    res = call_tool("report.py", runs[0]["prefix"], "--out", out)
    assert res.returncode == 0, res.stderr
    assert "2 runs, 1 rows" in res.stdout
    return out


def expected_stats(runs: list[dict]) -> dict[str, tuple[float, float]]:
    """Mean and sample std recomputed from the metrics.json files on disk."""
    metrics = []
    for r in runs:
        with open(os.path.join(r["run_dir"], "metrics.json")) as f:
            metrics.append(json.load(f))
    return {name: (statistics.mean(m[key] for m in metrics), statistics.stdev(m[key] for m in metrics))
            for name, key in (("last_top1", "last_acc"), ("best_top1", "best_acc"), ("last_top5", "last_acc_top5"))}


def test_results_md_has_one_row_with_mean_and_std(runs, report):
    with open(os.path.join(report, "results.md"), encoding="utf-8") as f:
        text = f.read()
    rows = [line for line in text.splitlines() if line.startswith("| digits |")]
    assert len(rows) == 1, text
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    header = [c.strip() for c in text.splitlines()[2].strip("|").split("|")]
    row = dict(zip(header, cells))
    assert row["Student"] == "digits_student" and row["Method"] == "vanilla" and row["LS"] == "off"
    assert row["n"] == "2" and row["Epochs"] == "2" and row["Teacher"] == "—"
    stats = expected_stats(runs)
    for column, name in (("Top-1 last", "last_top1"), ("Top-1 best", "best_top1"), ("Top-5 last", "last_top5")):
        mean, std = stats[name]
        assert row[column].strip("*") == f"{mean:.2f} ± {std:.2f}", (column, row[column])
    assert row["Params"] == f"{runs[0]['student_params'] / 1e3:.2f} K"
    assert "sample std (n − 1)" in text and "![compare digits](compare_digits.png)" in text


def test_results_csv_numbers(runs, report):
    with open(os.path.join(report, "results.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row = rows[0]
    assert row["n"] == "2" and row["seeds"] == "0 1" and row["method"] == "NONE" and row["logit_stand"] == "0"
    for name, (mean, std) in expected_stats(runs).items():
        assert float(row[f"{name}_mean"]) == pytest.approx(mean, abs=1e-5)
        assert float(row[f"{name}_std"]) == pytest.approx(std, abs=1e-5)
    assert float(row["train_time_s_mean"]) == pytest.approx(statistics.mean(r["train_time_s"] for r in runs), abs=1e-5)


def test_report_plots_are_pngs(report):
    for name in ("curves_digits_digits_student.png", "compare_digits.png"):
        assert_png(os.path.join(report, name))


def test_single_run_shows_dash_and_incomplete_runs_are_skipped(runs, tmp_path):
    from kdlab.reports.table import find_runs, markdown_table, summarize

    one = tmp_path / "logs" / "one"
    shutil.copytree(runs[0]["run_dir"], one, ignore=shutil.ignore_patterns("*best", "*latest", "tensorboard"))
    rows = summarize(find_runs([str(tmp_path / "logs")]))
    assert rows[0]["n"] == 1 and rows[0]["last_top1_std"] is None
    assert f"**{runs[0]['last_acc']:.2f} ± —**" in markdown_table(rows)

    stopped = tmp_path / "logs" / "stopped"
    shutil.copytree(one, stopped)
    metrics = json.loads((stopped / "metrics.json").read_text())
    metrics.update(last_epoch=1, history=metrics["history"][:1])
    (stopped / "metrics.json").write_text(json.dumps(metrics))
    assert len(find_runs([str(tmp_path / "logs")])) == 1
    assert len(find_runs([str(tmp_path / "logs")], include_incomplete=True)) == 2


def test_report_without_runs_is_one_line_error(tmp_path):
    res = call_tool("report.py", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("report.py: error: no finished runs")


def test_logit_views(runs, tmp_path):
    """Teacher = the seed-0 run, student = the seed-1 run (same architecture), through tools/visualize.py."""
    out = tmp_path / "logits"
    teacher, student = (os.path.join(r["run_dir"], "student_best") for r in runs)
    text = run_main("visualize", [
        "--cfg", os.path.join(REPO, "configs/digits/kd/digits_teacher_digits_student.yaml"),
        "--teacher-ckpt", teacher, "--student-ckpt", student, "--out", str(out),
        "DISTILLER.TEACHER", "digits_student", "SOLVER.DEVICE", "cpu",
    ])
    assert "360 test samples, 10 classes" in text
    stats = json.loads((out / "logit_stats.json").read_text())
    assert stats["num_samples"] == 360
    # student_best holds the best epoch's weights: its test accuracy is the run's best_acc.
    assert stats["teacher"]["top1"] == pytest.approx(runs[0]["best_acc"], abs=1e-4)
    assert stats["student"]["top1"] == pytest.approx(runs[1]["best_acc"], abs=1e-4)
    for name in ("teacher", "student"):
        raw, std = stats[name]["raw"], stats[name]["standardized"]
        assert std["sample_mean"]["mean"] == pytest.approx(0.0, abs=1e-5)
        assert std["sample_std"]["mean"] == pytest.approx(1.0, abs=1e-4)
        assert std["sample_std"]["std"] < 1e-4 < raw["sample_std"]["std"]
    assert -1.0 <= stats["pearson_r"]["raw"] <= 1.0 and -1.0 <= stats["pearson_r"]["standardized"] <= 1.0
    for name in ("logit_values", "logit_sample_stats", "logit_scatter", "logit_example"):
        assert_png(str(out / f"{name}.png"))


def test_eval_plots(runs, tmp_path):
    out = tmp_path / "eval_plots"
    text = run_main("eval", [
        "--cfg", os.path.join(REPO, "configs/digits/vanilla/digits_teacher.yaml"),
        "--ckpt", os.path.join(runs[0]["run_dir"], "student_best"), "--plots", str(out), "--json",
        "DISTILLER.STUDENT", "digits_student", "SOLVER.DEVICE", "cpu",
    ])
    report = json.loads(text)
    assert report["top1"] == pytest.approx(runs[0]["best_acc"], abs=1e-4)
    cr = report["classification_report"]  # precision / recall / F1 from the same confusion matrix
    assert 100 * cr["accuracy"] == pytest.approx(report["top1"]) and cr["macro avg"]["support"] == 360
    for name, acc in report["per_class_acc"].items():
        assert 100 * cr[name]["recall"] == pytest.approx(acc)
    assert sorted(os.path.basename(p) for p in report["plots"]) == ["confusion_matrix.png", "per_class_accuracy.png"]
    for path in report["plots"]:
        assert_png(path)


def test_segmentation_iou_bars(tmp_path):
    from kdlab.reports.plots import save_eval_plots

    names = ["background", "aeroplane", "bicycle", "bird"]
    report = {"model": "seg", "dataset": "voc", "class_names": names,
              "per_class_iou": {"background": 91.0, "aeroplane": 60.5, "bicycle": None, "bird": 33.3},
              "confusion_matrix": [[90, 5, 0, 5], [10, 60, 0, 30], [0, 0, 0, 0], [20, 10, 0, 70]]}
    paths = save_eval_plots(report, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["confusion_matrix.png", "per_class_iou.png"]
    for path in paths:
        assert_png(path)
