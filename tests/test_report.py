"""The step report runs end to end on CPU at the tiny preset, Stage 1 and Stage 2 rows.

Slow (per-block compile builds C++ kernels on the CPU): `.ci/run` runs it with `pytest -m slow`.
"""

import json

import pytest

import torch

from bench.report import main, row_config
from ivn_kernels._triton import HAS_TRITON, triton


@pytest.mark.slow
def test_report_tiny_rows(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["--rows", "tiny,tiny-stage2", "--steps", "1", "--warmup", "1", "--batch", "2",
                 "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["row"] for r in record["rows"]] == ["tiny", "tiny-stage2"]
    for row in record["rows"]:
        (fast,) = row["fast"]
        for r in (row["eager"], fast):
            assert r["step_s"] > 0 and r["clips_per_s"] > 0, row
        assert row["eager"]["flops_per_step"] > 0 and 0 < fast["mfu"]
        assert fast["speedup"] == pytest.approx(row["eager"]["step_s"] / fast["step_s"])
    assert "vs eager" in capsys.readouterr().out


def test_fast_variants_share_one_eager_baseline(tmp_path, capsys):
    """Each --fast is one more fast-path row against the eager step timed once; its fields are
    recorded and listed under the table."""
    out = tmp_path / "report.json"
    assert main(["--rows", "tiny", "--steps", "1", "--warmup", "0", "--batch", "2", "--fast", "train.compile=false",
                 "--fast", "train.compile=false,model.decoder.fp32=false", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["triton"] == (triton.__version__ if HAS_TRITON else None)
    (row,) = record["rows"]
    assert [r["set"] for r in row["fast"]] == [{"train.compile": "false"},
                                               {"train.compile": "false", "model.decoder.fp32": "false"}]
    assert all(r["step_s"] > 0 and r["speedup"] > 0 for r in row["fast"])
    table = capsys.readouterr().out
    assert "fast2: train.compile=false, model.decoder.fp32=false" in table and "fast1 " in table


def test_set_reaches_both_paths_and_fast_only_the_fast_path(tmp_path):
    kw = dict(sets={"model": {"decoder": {"depth": "1"}}}, fast_sets={"train": {"activation_checkpointing": "op"}})
    eager = row_config("tiny", 2, False, tmp_path, torch.device("cpu"), str(tmp_path / "e"), **kw)
    fast = row_config("tiny", 2, True, tmp_path, torch.device("cpu"), str(tmp_path / "f"), **kw)
    assert eager.model.decoder.depth == fast.model.decoder.depth == 1
    assert (eager.train.activation_checkpointing, fast.train.activation_checkpointing) == ("none", "op")
    assert (eager.train.compile, eager.train.kernels, eager.train.attention) == (False, "torch", "sdpa")
    assert (fast.train.compile, fast.train.kernels, fast.train.attention) == (True, "auto", "auto")


def test_a_bad_variant_is_a_usage_error_before_any_step(capsys):
    with pytest.raises(SystemExit):
        main(["--rows", "tiny", "--fast", "train.activation_checkpointing=budget,train.compile=false"])
    assert "needs --train.compile true" in capsys.readouterr().err
