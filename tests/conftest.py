"""Without a GPU, Triton kernels run through the interpreter; it is chosen from the environment
when triton is first imported, so set it before any test module imports ivn_kernels."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A 2-step Stage 1 checkpoint of a 2-block encoder on 4-frame clips: what the probe tests read."""
    from ivn_fast.pretrain import main as pretrain_main

    out = tmp_path_factory.mktemp("probe_run")
    tiny = ["--train.progress", "false", "--train.tensorboard", "false", "--data.num_workers", "0",
            "--data.synthetic_videos", "16", "--train.batch_size", "4", "--model.encoder.depth", "2",
            "--model.teacher.num_layers", "2", "--data.num_frames", "4", "--max-steps", "2",
            "--model.decoder.sampling_steps", "2", "--output_dir", str(out / "run")]
    assert pretrain_main(tiny) == 0
    return out / "run" / "checkpoints" / "step_00000002"
