"""One whole training step (`Trainer.train_step`) per report row: the eager baseline beside the fast
path (per-block compile, Triton kernels, best attention), with clips/s and peak memory.

On CUDA the rows are the paper's ViT-B memory-table setting and the final ViT-B Stage 1 setting;
on CPU the tiny preset's eager step only. `python -m bench.report` adds FLOPs, MFU and GPU-hours.
"""

import pytest
import torch

from bench.harness import CUDA, DEVICE, skip_on_cpu, timed
from bench.report import row_config
from ivn_fast.models.attention_table import configure as configure_attention
from ivn_fast.train.distributed import World
from ivn_fast.train.trainer import Trainer
from ivn_kernels import set_kernels

ROWS = {"b8-align-diffusion": 32, "b16-stage1": 16} if CUDA else {"tiny": 8}


@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("variant", ["reference", "fast"])
def test_train_step(benchmark, row, variant, tmp_path_factory):
    skip_on_cpu(variant)
    root = tmp_path_factory.mktemp(f"step-{row}-{variant}")
    device = torch.device(DEVICE)
    cfg = row_config(row, ROWS[row], variant == "fast", tmp_path_factory.getbasetemp() / "teachers", device,
                     str(root))
    benchmark.extra_info["attention"] = configure_attention(cfg.train.attention, device)
    set_kernels(cfg.train.kernels)
    trainer = Trainer(cfg, World())
    video = torch.randn(cfg.train.batch_size, 3, cfg.data.num_frames, cfg.data.size, cfg.data.size,
                        device=device, generator=torch.Generator(device=device).manual_seed(0))
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(benchmark, lambda: trainer.train_step(video))
    benchmark.extra_info["clips_per_s"] = cfg.train.batch_size / seconds
    if CUDA:
        benchmark.extra_info["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    assert trainer.skipped == 0  # every timed step was a real update
