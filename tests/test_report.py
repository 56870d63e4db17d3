"""The step report runs end to end on CPU at the tiny preset, Stage 1 and Stage 2 rows.

Slow (per-block compile builds C++ kernels on the CPU): `.ci/run` runs it with `pytest -m slow`.
"""

import json

import pytest

from bench.report import main


@pytest.mark.slow
def test_report_tiny_rows(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["--rows", "tiny,tiny-stage2", "--steps", "1", "--warmup", "1", "--batch", "2",
                 "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["row"] for r in record["rows"]] == ["tiny", "tiny-stage2"]
    for row in record["rows"]:
        for variant in ("eager", "fast"):
            assert row[variant]["step_s"] > 0 and row[variant]["clips_per_s"] > 0, row
        assert row["eager"]["flops_per_step"] > 0 and 0 < row["fast"]["mfu"]
    assert "fast / eager" in capsys.readouterr().out
