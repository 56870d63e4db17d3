"""The README's main command, in full: Stage 1 of the tiny preset on synthetic clips, then Stage 2.

Slow (several minutes on 2 cores): `.ci/run` runs it with `pytest -m slow`.
"""

import json

import pytest

from ivn_fast.pretrain import main


def _losses(path):
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_default_stage1_then_stage2(tmp_path):
    quiet = ["--train.progress", "false", "--output_dir", str(tmp_path)]
    assert main(quiet) == 0
    stage1 = _losses(tmp_path / "metrics.jsonl")
    assert len(stage1) == 30 and stage1[-1] < 0.75 * stage1[0], stage1
    assert (tmp_path / "recon.png").stat().st_size > 0
    assert (tmp_path / "checkpoints" / "step_00000300").is_dir()

    assert main(quiet + ["--stage", "2"]) == 0
    stage2 = _losses(tmp_path / "stage2" / "metrics.jsonl")
    assert stage2[-1] < stage2[0], stage2
    assert (tmp_path / "stage2" / "masks.png").stat().st_size > 0
