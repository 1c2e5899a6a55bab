"""kdlab.evaluation.model_info and tools/models.py: parameters, MACs/FLOPs and latency."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kdlab.evaluation.model_info import model_info
from kdlab.models import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, spinning OpenMP threads make forwards erratic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_exact_count_for_a_single_convolution():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    info = model_info(conv, (8, 6), latency_runs=0)
    assert info["macs"] == 8 * 6 * 4 * 3 * 9 and info["flops"] == 2 * info["macs"]
    assert info["params"] == 4 * 3 * 9 and info["latency_ms"] is None


@pytest.mark.parametrize(
    "name, gmacs, params", [("resnet32x4", 1.083, 7433860), ("resnet8x4", 0.177, 1233540)]
)
def test_published_cifar_macs(name, gmacs, params):
    model = build_model(name, num_classes=100).train()
    info = model_info(model, 32, latency_runs=2)
    assert info["macs"] / 1e9 == pytest.approx(gmacs, rel=0.02)
    assert info["params"] == params
    assert info["latency_ms"] > 0
    assert model.training  # the caller's mode is restored


def test_models_tool_prints_json_and_markdown(capsys):
    spec = importlib.util.spec_from_file_location("models_tool", REPO / "tools" / "models.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--model", "resnet8", "--num-classes", "10", "--runs", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model"] == "resnet8" and rows[0]["params"] == 78042 and rows[0]["macs"] > 0
    assert tool.main(["--model", "wrn_16_1", "--runs", "0", "--input-size", "40"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model | params (M) | MACs (M)") and table[2].startswith(
        "| wrn_16_1 | 0.181 |"
    )
