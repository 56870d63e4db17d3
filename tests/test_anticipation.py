"""Action anticipation: EPIC-KITCHENS-100 annotations, the context window, the frozen features
(encoder on the context, predictor on the future), the loss and metric, and the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

from ivn_fast.anticipation import Anticipator, focal_loss, main, mean_class_recall, train_anticipation
from ivn_fast.config import EncoderConfig
from ivn_fast.data.anticipation import AnticipationClips, Segment, parse_timestamp, read_segments
from ivn_fast.features import Kept
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.predictor import Predictor
from ivn_fast.models.probe import AnticipationProbe
from launch import torchrun
from video_helpers import write_video

HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
          "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")


def test_epic_annotations_are_read_and_bad_rows_named(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text(HEADER + 'P01_01_0,P01,P01_01,00:00:01.00,00:01:02.50,00:01:04.00,3125,3200,open door,open,3,'
                            'door,8,"[\'door\']",[8]\n'
                            'P02_11_5,P02,P02_11,00:00:01.00,00:00:03.00,00:00:04.00,150,200,take cup,take,0,'
                            'cup,13,"[\'cup\']",[13]\n')
    segments = read_segments(str(csv), root="/data", pattern="{participant_id}/videos/{video_id}.MP4")
    assert segments == [Segment("/data/P01/videos/P01_01.MP4", 62.5, 3, 8), Segment("/data/P02/videos/P02_11.MP4",
                                                                                    3.0, 0, 13)]
    assert parse_timestamp("01:00:00.25") == 3600.25 and parse_timestamp("7.5") == 7.5
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "a,P01,P01_01,0,00:00:01.00,0,0,0,x,x,not-a-class,y,1,[],[]\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: cannot read this action"):
        read_segments(str(bad))
    missing = tmp_path / "missing.csv"
    missing.write_text("video_id,verb_class\nP01_01,3\n")
    with pytest.raises(ValueError, match="no column.*start_timestamp, noun_class"):
        read_segments(str(missing))


def test_the_context_ends_the_anticipation_time_before_the_action(tmp_path):
    video = str(write_video(tmp_path / "v", frames=40, fps=10))  # 4 s
    segments = [Segment(video, 3.0, 1, 2), Segment(video, 0.5, 0, 0), Segment(video, 3.9, 1, 2)]
    clips = AnticipationClips(segments, frames=4, size=32, fps=4.0, anticipation=1.0, train=False, seed=0)
    assert len(clips) == 2  # the action at 0.5 s leaves no context before it
    # 4 frames at 4 fps over [1.0, 2.0) s: native frames 10 .. 19, one from the middle of each quarter
    assert clips.clips.plan(0).frames.tolist() == [11, 13, 16, 18]
    assert clips.clips.plan(1).frames.max() < 29  # ends 1 s before 3.9 s
    item = clips[0]
    assert item["video"].shape == (3, 4, 32, 32) and (item["verb"], item["noun"], item["action"]) == (1, 2, 0)
    trained = AnticipationClips(segments, frames=4, size=32, fps=4.0, anticipation=1.0, train=True, seed=0)
    assert all(10 <= f < 20 for f in trained.clips.plan(0).frames)


def test_features_hold_the_context_encoding_and_the_predicted_future():
    torch.manual_seed(0)
    cfg = EncoderConfig(embed_dim=32, depth=2, num_heads=2, patch_size=8)
    grid = (6, 2, 2)
    encoder = VideoEncoder(cfg, grid).eval()
    predictor = Predictor(enc_dim=32, num_cls=cfg.num_cls, grid=grid, kind="vit", vit_depth=1, vit_width=48,
                          vit_heads=2).eval()
    model = Anticipator(encoder, predictor, future=2)
    clip = torch.randn(2, 3, 6, 16, 16)
    out = model(clip[:, :, :4]).tokens
    k = 4 * 4
    visible = torch.arange(k).repeat(2, 1)
    # the same as pretraining's masked forward of the whole clip, whatever its last 2 frames show
    tokens = encoder(clip, visible).tokens
    assert out.shape == (2, cfg.num_cls + 6 * 4, 48) and model.width == 48
    torch.testing.assert_close(out[:, :cfg.num_cls + k], F.pad(tokens, (0, 16)))
    torch.testing.assert_close(out[:, cfg.num_cls + k:], predictor(tokens, visible, (6, 2, 2))[:, k:])
    alone = Anticipator(encoder, None, future=2)(clip[:, :, :4]).tokens
    torch.testing.assert_close(alone, tokens)
    probe = AnticipationProbe(32, 48, cfg.num_cls + k, (5, 7, 9), num_heads=2)
    verb, noun, action = probe(out)
    assert verb.shape == (2, 5) and noun.shape == (2, 7) and action.shape == (2, 9)
    padded = out.clone()
    padded[:, :cfg.num_cls + k, 32:] = 5.0  # the context rows' padding never reaches the readout
    torch.testing.assert_close(probe(padded)[2], action)
    action.sum().backward()
    assert probe.future_proj.weight.grad.abs().sum() > 0


def test_the_readout_learns_what_only_the_predicted_rows_carry():
    """Labels written plainly into the future rows alone: read with them, and at chance without."""
    torch.manual_seed(0)
    n, context, future, dim, wide = 256, 5, 2, 16, 24
    verb, noun = torch.randint(4, (n,)), torch.randint(3, (n,))
    tokens = torch.zeros(n, 1, context + future, wide)
    tokens[:, 0, :context, :dim] = torch.randn(n, context, dim)
    tokens[:, 0, context:] = 0.1 * torch.randn(n, future, wide)
    tokens[torch.arange(n), 0, context, verb] += 3.0
    tokens[torch.arange(n), 0, context + 1, 8 + noun] += 3.0
    labels = (verb, noun, verb * 3 + noun)
    train, val = (Kept(tokens[rows], *(y[rows] for y in labels), batch=32) for rows in (slice(0, 192), slice(192, n)))
    common = dict(dim=dim, context=context, classes=(4, 3, 12), num_heads=2, epochs=25, batch=32, lr=1e-2,
                  weight_decay=0.0, seed=0, device=torch.device("cpu"))
    read = train_anticipation(train, val, future_dim=wide, **common)
    assert read["verb_top1"] > 0.9 and read["noun_top1"] > 0.9 and read["action_recall5"] > 0.9
    blind = train_anticipation(train, val, future_dim=0, **common)
    assert blind["verb_top1"] < 0.5 and blind["noun_top1"] < 0.6


def test_focal_loss_and_mean_class_recall():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -2.0], [9.0, 9.0, 9.0]])
    labels = torch.tensor([0, 2, -1])
    p = logits[:2].sigmoid()
    t = F.one_hot(labels[:2], 3).float()
    p_t = p * t + (1 - p) * (1 - t)
    want = ((0.25 * t + 0.75 * (1 - t)) * (1 - p_t) ** 2 * -p_t.log()).sum() / 2
    torch.testing.assert_close(focal_loss(logits, labels), want)
    # class 0: 2 of 3 found, class 1: 0 of 1, class 2: 1 of 1; unlabelled rows left out
    hits = torch.tensor([1, 1, 0, 0, 1, 1])
    assert mean_class_recall(hits, torch.tensor([0, 0, 0, 1, 2, -1])) == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_cli_on_synthetic_clips(tiny_checkpoint, tmp_path, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:anticipation:48", "--val-list",
            "synthetic:anticipation:24", "--epochs", "2", "--batch", "8", "--workers", "0", "--fps", "2"]
    assert main(args + ["--json", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.png")]) == 0
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["predictor"] and record["future_frames"] == 2 and record["frames"] == 4
    assert record["classes"]["verb"] == 8 and record["classes"]["noun"] == 6
    assert len(record["curve"]) == 2 and record["curve"][-1] == record["action_recall5"]
    assert all(0 <= record[f"{h}_recall5"] <= 1 for h in ("verb", "noun", "action"))
    assert (tmp_path / "a.png").is_file() and "encoder + predictor" in capsys.readouterr().out
    assert main(args + ["--without-predictor", "--json", str(tmp_path / "b.json")]) == 0
    assert not json.loads((tmp_path / "b.json").read_text())["predictor"]
    assert main(args + ["--anticipation", "2"]) == 2  # 4 of 4 frames ahead: no context
    assert "must be 1 to 3" in capsys.readouterr().err


def test_cli_on_an_annotation_csv(tiny_checkpoint, tmp_path):
    for name in ("P01_01", "P01_02"):
        write_video(tmp_path / name, frames=40, fps=10)
    rows = [f"x,P01,P01_0{1 + i % 2},0,00:00:0{1 + i % 3}.50,0,0,0,x,x,{i % 3},y,{i % 2},[],[]\n" for i in range(8)]
    csv = tmp_path / "train.csv"
    csv.write_text(HEADER + "".join(rows) + "x,P01,P01_01,0,00:00:00.50,0,0,0,x,x,0,y,0,[],[]\n")
    out = tmp_path / "a.json"
    assert main(["--checkpoint", str(tiny_checkpoint), "--train-list", str(csv), "--val-list", str(csv), "--root",
                 str(tmp_path), "--video-pattern", "{video_id}.mp4", "--epochs", "1", "--batch", "4", "--workers",
                 "0", "--fps", "2", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["clips"] == {"train": 8, "val": 8}  # the action at 0.5 s has no context
    assert record["classes"] == {"verb": 3, "noun": 2, "action": 6} and record["unseen_val_actions"] == 0


def test_an_encoder_without_its_predictor_is_refused_by_name(tiny_checkpoint, tmp_path, capsys):
    from ivn_fast.export import export_encoder

    exported = export_encoder(tiny_checkpoint, tmp_path / "enc")
    args = ["--checkpoint", str(exported), "--train-list", "synthetic:anticipation:8", "--val-list",
            "synthetic:anticipation:8", "--workers", "0", "--fps", "2"]
    assert main(args) == 2
    assert "only those hold the predictor" in capsys.readouterr().err
    assert main(args + ["--without-predictor", "--epochs", "1"]) == 0


def test_two_processes_stream_the_readout_as_one_does(tiny_checkpoint, tmp_path):
    def run(nproc: int) -> dict:
        out = tmp_path / f"{nproc}.json"
        torchrun("ivn_fast.anticipation", nproc, "--checkpoint", str(tiny_checkpoint), "--train-list",
                 "synthetic:anticipation:24", "--val-list", "synthetic:anticipation:12", "--epochs", "2",
                 "--batch", "8", "--workers", "0", "--features", "stream", "--fps", "2", "--json", str(out))
        return json.loads(out.read_text())

    one, two = run(1), run(2)
    assert two["curve"] == one["curve"] and two["verb_recall5"] == one["verb_recall5"]
    torch.testing.assert_close(torch.tensor(two["train_loss"]), torch.tensor(one["train_loss"]), rtol=1e-3, atol=1e-4)
