"""Exported encoders give the same features as the encoder inside the checkpoint."""

import pytest
import torch

import ivn_fast
from ivn_fast.config import EncoderConfig, from_dict
from ivn_fast.export import main as export_main
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.pretrain import main as pretrain_main
from ivn_fast.train.checkpoint import latest_checkpoint, load_checkpoint, load_full
from ivn_fast.train.stage1 import token_grid

TINY = ["--train.progress", "false", "--train.tensorboard", "false", "--data.num_workers", "0",
        "--data.synthetic_videos", "16", "--train.batch_size", "4", "--model.encoder.depth", "2",
        "--model.teacher.num_layers", "2", "--model.decoder.sampling_steps", "3", "--max-steps", "2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("export_run")
    assert pretrain_main(TINY + ["--output_dir", str(out / "run")]) == 0
    return latest_checkpoint(out / "run" / "checkpoints")


def test_export_round_trips_the_features(ckpt, tmp_path):
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "enc")]) == 0
    state = load_checkpoint(ckpt)
    cfg = from_dict(state["config"])
    original = VideoEncoder(cfg.model.encoder, token_grid(cfg)).eval()
    encoder_weights = {k[8:]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    original.load_state_dict(encoder_weights)
    part = load_full(ckpt, "model", "encoder.")  # only the encoder's tensors are read
    assert part.keys() == encoder_weights.keys() and all(torch.equal(part[k], v) for k, v in encoder_weights.items())
    loaded = ivn_fast.load_encoder(tmp_path / "enc")
    assert isinstance(loaded.cfg, EncoderConfig) and not loaded.training
    video = torch.randn(2, 3, 4, 56, 56)  # another clip size than training: tables are resized
    with torch.no_grad():
        assert torch.equal(loaded(video).tokens, original(video).tokens)
    # an earlier export is replaced; a directory holding anything else is refused and left alone
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "enc")]) == 0
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "run")]) == 2
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == "{}\n"


def test_missing_checkpoint_and_export_give_clear_errors(tmp_path, capsys):
    assert export_main(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "enc")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="neither a released checkpoint file, an exported encoder"):
        ivn_fast.load_encoder(tmp_path)


def test_random_init_is_drawn_from_the_seed(ckpt):
    a, b, c = (ivn_fast.load_encoder(ckpt, random_init=True, seed=s) for s in (0, 0, 1))
    trained = ivn_fast.load_encoder(ckpt)
    assert torch.equal(a.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, trained.blocks[0].attn.qkv.weight)
