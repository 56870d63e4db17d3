"""The toy ablation runs end to end at its CI size and writes its table, plot and numbers."""

import json

from PIL import Image

from ivn_fast.experiments.toy_ablation import TASKS, VARIANTS, main


def test_quick_toy_ablation_end_to_end(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path), "--seeds", "0", "1"]) == 0
    table = (tmp_path / "toy_ablation.md").read_text()
    assert table in capsys.readouterr().out
    for variant in VARIANTS:
        assert f"| {variant.label} |" in table
    result = json.loads((tmp_path / "toy_ablation.json").read_text())
    assert len(result["runs"]) == 2 * len(VARIANTS) and result["seeds"] == [0, 1]
    for run in result["runs"]:
        assert (run["pretrain"] is None) == (run["variant"] == "random")
        assert all(0.0 <= run["probe"][t]["top1"] <= 1.0 for t in TASKS)
    stage2 = next(r for r in result["runs"] if r["variant"] == "stage2")
    assert stage2["pretrain"]["steps"] == result["size"]["stage2_steps"]
    for task in TASKS:
        s = result["summary"]["align"][task]
        assert len(s["values"]) == 2 and s["min"] <= s["mean"] <= s["max"]
    assert Image.open(tmp_path / "toy_ablation.png").size == (1000, 520)
    assert (tmp_path / "seed_1" / "recon_align_diffusion" / "stage2" / "checkpoints").is_dir()


def test_stage2_budget_must_fit_inside_the_steps(capsys):
    assert main(["--quick", "--steps", "3", "--stage2-steps", "3"]) == 2
    assert "stage2 steps" in capsys.readouterr().err


def test_one_seed_reports_no_spread():
    from ivn_fast.experiments.toy_ablation import SIZES, markdown, summarise

    records = [{"variant": v.key, "probe": {t: {"top1": 0.5} for t in TASKS}} for v in VARIANTS]
    summary = summarise(records)
    assert all(summary[v.key][t]["std"] is None for v in VARIANTS for t in TASKS)
    table = markdown(summary, SIZES["quick"], [0], 8, 56, 1.0)
    rows = [line for line in table.splitlines() if line.startswith(f"| {VARIANTS[0].label} |")]
    assert rows and "0.500 |" in rows[0] and "±" not in rows[0]  # a single seed has no deviation to print
