"""tools/bench_teacher_cache.py --tiny on the CPU, and the --teacher-cache lines of tools/bench.py."""

from __future__ import annotations

import json

from conftest import load_script


def test_tiny_run_reports_both_steps_and_the_build(capsys):
    tool = load_script("tools/bench_teacher_cache.py", "bench_teacher_cache")
    assert tool.main(["--tiny", "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["teacher"], r["student"], r["batch_size"], r["device"]) == ("resnet8", "resnet8", 8, "cpu")
    assert r["step_s"] > 0 and r["cached_step_s"] > 0
    assert r["speedup_cached"] == r["step_s"] / r["cached_step_s"]
    b = r["build"]
    assert (b["images"], b["views"], b["build_batch"]) == (4, 162, 64) and b["build_s"] > 0
    assert abs(b["image_views_per_s"] * b["build_s"] - 4 * 162) < 1  # build_s is rounded to ms
    assert b["lookup_max_abs_diff"] < 1e-4  # the cached rows are the teacher's logits of the drawn views
    # the full build: 50000 x 162 at the measured rate, in hours and in epochs of ceil(50000 / 8) on-the-fly steps
    assert b["full_images"] == 50000
    assert abs(b["full_build_h"] - 50000 * 162 / b["image_views_per_s"] / 3600) < 0.01
    assert abs(b["full_build_epochs"] - 50000 * 162 / b["image_views_per_s"] / (6250 * r["step_s"])) < 0.1
    saved = 1 - r["cached_step_s"] / r["step_s"]
    assert ("break_even_epochs" in r) == (saved > 0)
    train_h = r["run_estimate_train_h"]
    assert abs(r["run_estimate_cached_h"] - (r["run_estimate_h"] - train_h * saved)) < 0.02
    text = tool.report(r)
    assert "teacher cache" in text and "full CIFAR-100 build" in text and "162 views" in text
    bench = load_script("tools/bench.py", "bench_tool")
    lines = bench.report_cached(r)
    assert lines[0].lstrip().startswith("kdlab, teacher cache") and f"x{r['speedup_cached']:.2f}" in lines[0]
    assert any(line.lstrip().startswith("full build") for line in lines)
