"""The CPU memory accounting (bench.memory): exact on known cases, and it sees what each
activation-checkpointing mode gives back (slow: whole train steps; `.ci/run` runs them with
`pytest -m slow`)."""

import json

import pytest
import torch
from torch import nn

from bench.memory import LiveBytes, SavedBytes, main, measure, project
from bench.report import config_item, config_sets

MB = 1 << 20


def test_live_bytes_follow_allocations_and_frees():
    live = LiveBytes()
    with live:
        a = torch.ones(MB // 4)  # 1 MB of float32
        b = torch.ones(MB // 2)  # 2 MB
        del a
        c = torch.ones(MB // 4)
        view = c[:10]  # a view adds no storage
    assert live.peak == 3 * MB
    assert live.live == 3 * MB  # b and c alive
    del b, c, view


def test_saved_bytes_by_module_leave_out_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    x = torch.randn(32, 64, requires_grad=True)
    saved = SavedBytes(model, depth=1)
    with saved.recording():
        model(x).sum()
    # linear 0 keeps its input, GELU its input, linear 2 its input; weights are not counted
    assert dict(saved.by_module) == {"*": (32 * 64 + 2 * 32 * 256) * 4}
    assert saved.weight_copies == 0


@pytest.mark.slow
def test_checkpointing_modes_order_what_forward_keeps(tmp_path):
    kept = {}
    for mode in ("none", "op", "full"):
        result = measure("tiny", [2], mode, 2, tmp_path / mode)
        kept[mode] = result["kept_after_forward"][2]
        assert result["step_peak"][2] >= kept[mode]
    assert kept["full"] < kept["op"] < kept["none"], kept


@pytest.mark.slow
def test_projection_is_linear_in_clips(tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["--row", "tiny", "--batches", "1,2", "--per-gpu-batch", "4", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    peaks = {int(k): v for k, v in record["measured"]["step_peak"].items()}
    assert peaks[2] > peaks[1] > 0
    assert record["step_peak_gb"] * 1e9 == (peaks[2] + 2 * (peaks[2] - peaks[1]))
    assert record["projected_peak_gb"] > record["step_peak_gb"] > 0
    assert project({"step_peak": {1: 10, 3: 30}, "kept_after_forward": {1: 4, 3: 8}, "fixed": {"parameters": 5}},
                   5) == {"fixed_gb": 5e-9, "kept_after_forward_gb": 12e-9, "step_peak_gb": 50e-9,
                          "per_clip_gb": 10e-9, "projected_peak_gb": 55e-9}
    # a peak that does not grow with clips (the teacher's forward at small batches) yields to what forward keeps
    assert project({"step_peak": {1: 10, 3: 11}, "kept_after_forward": {1: 4, 3: 8}, "fixed": {"parameters": 5}},
                   5)["projected_peak_gb"] == 17e-9
    assert "projected peak at batch 4" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_blocks_report_what_they_save(tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["--row", "tiny", "--batches", "2", "--per-gpu-batch", "4", "--compile",
                 "--activation-checkpointing", "op", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["compile"] and record["saved_gb"] > 0 and "projected_peak_gb" not in record
    assert "compiled blocks" in capsys.readouterr().out


def test_bf16_decoder_keeps_less_for_backward(tmp_path, capsys):
    """--set reaches the measured config: the bf16 diffusion head saves its products in bf16."""
    saved = {}
    for fp32 in ("true", "false"):
        sets = config_sets([config_item(f"model.decoder.fp32={fp32}")])
        result = measure("tiny", [2], "none", 2, tmp_path / fp32, sets=sets)
        saved[fp32] = result["saved_by_module"]["decoder.net"]
    assert saved["false"] < 0.75 * saved["true"], saved
    with pytest.raises(SystemExit):
        main(["--set", "model.decoder.fp32"])
    assert "KEY=VALUE" in capsys.readouterr().err
