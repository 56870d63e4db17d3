"""The video-text (LiT) evaluation: caption files, the text tower, the contrastive loss, retrieval
metrics, and the command end to end (one and two processes)."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ivn_fast.data.captions import read_captions, synthetic_captions, synthetic_prompts, vocabulary
from ivn_fast.data.lists import ListError
from ivn_fast.data.synthetic import COLOURS, LABELS, SHAPES, SyntheticVideos
from ivn_fast.features import Kept
from ivn_fast.fit import fit
from ivn_fast.lit import (LiT, VideoEmbedding, contrastive_loss, draw_caption, retrieval, retrieval_metrics,
                          with_captions)
from ivn_fast.lit import main as lit_main
from ivn_fast.models.text import TextTower, builtin_text_model, load_text_model, word_tokenizer
from launch import torchrun
from video_helpers import write_video


def test_caption_files_merge_records_of_one_video_and_name_bad_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"video": "v0.mp4", "caption": "a dog runs"}\n\n'
                                      '{"video": "v1.mp4", "caption": ["a cat", "a cat sleeps"], "start": 1, "end": 3}\n'
                                      '{"video": "v0.mp4", "caption": "the dog again"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"video": "/abs/v2.mp4", "caption": "a bird"},
                                                 {"video": "v1.mp4", "caption": "the whole video"}]))
    table = read_captions([str(tmp_path / "a.jsonl"), str(tmp_path / "b.json")], root="/data")
    assert table.captions == [["a dog runs", "the dog again"], ["a cat", "a cat sleeps"], ["a bird"],
                              ["the whole video"]]
    assert [table.videos[i].path for i in range(4)] == ["/data/v0.mp4", "/data/v1.mp4", "/abs/v2.mp4", "/data/v1.mp4"]
    assert table.videos.labels.tolist() == [0, 1, 2, 3]  # a replaced video brings its own captions
    assert (table.videos[1].start, table.videos[1].end) == (1.0, 3.0)
    bad = {'{"video": "v.mp4"}': "a.jsonl:2: a record needs 'video'", '{"video": "v.mp4", "caption": ""}':
           "a.jsonl:2: 'caption' must be", '{"video": "v.mp4", "caption": "x", "start": 5, "end": 2}': "ends",
           '{"video": "v.mp4", "caption": "x"': "a.jsonl:2: not valid JSON"}
    for line, message in bad.items():
        (tmp_path / "a.jsonl").write_text('{"video": "v0.mp4", "caption": "ok"}\n' + line + "\n")
        with pytest.raises(ListError, match=message):
            read_captions([str(tmp_path / "a.jsonl")])
    with pytest.raises(ListError, match="not found"):
        read_captions([str(tmp_path / "gone.json")])


def test_synthetic_captions_say_what_the_renderer_drew():
    videos = SyntheticVideos(24, 4, 64, seed=5)
    tokenizer = word_tokenizer(vocabulary(), 32)
    for i in range(24):
        labels, clip = videos.render(i)
        look = videos.look(i)
        captions = synthetic_captions(videos, i)
        assert len(captions) == 3 and all(SHAPES[labels["shape"]] in c and COLOURS[look.colour] in c for c in captions)
        x0, y0, x1, y1 = clip.boxes[0].tolist()  # the look's start is where frame 0 has the shape (y up there)
        assert abs((x0 + x1) / 2 - look.x0) < 0.1 and abs((y0 + y1) / 2 - (1 - look.y0)) < 0.1
        ids = tokenizer(captions)["input_ids"]
        assert all(tokenizer.unk_token_id not in row for row in ids)
    for label, names in LABELS.items():
        prompts = synthetic_prompts(label)
        assert len(prompts) == 2 * len(COLOURS) * 8 * 6 * 3 // len(names) and all(p.count("{}") == 1 for p in prompts)
        assert all(tokenizer.unk_token_id not in tokenizer(p.format(n))["input_ids"] for p in prompts for n in names)


def test_text_tower_loads_a_saved_model_and_the_text_side_of_a_two_tower_one(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    tokenizer, model = builtin_text_model(["a", "red", "star"], width=32, depth=1, heads=2)
    model.save_pretrained(tmp_path / "text")
    tokenizer.save_pretrained(tmp_path / "text")
    torch.manual_seed(0)
    tower = TextTower(*load_text_model(str(tmp_path / "text")), dim=8)
    ids, mask = tower.tokenize(["a red star", "star"])
    assert ids.shape == mask.shape == (2, 5) and mask.sum(1).tolist() == [5, 3]
    torch.manual_seed(0)
    same = TextTower(tokenizer, model, dim=8)
    out = tower(ids, mask)
    torch.testing.assert_close(out, same(ids, mask))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    dual = CLIPModel(CLIPConfig(text_config=model.config.to_dict(), vision_config={
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 14}))
    dual.save_pretrained(tmp_path / "dual")
    tokenizer.save_pretrained(tmp_path / "dual")
    text_side = load_text_model(str(tmp_path / "dual"))[1]
    assert not any("vision" in name for name, _ in text_side.named_parameters())
    assert TextTower(tokenizer, text_side, dim=8)(ids, mask).shape == (2, 8)
    with pytest.raises(FileNotFoundError):
        load_text_model(str(tmp_path / "none"))


def test_contrastive_loss_is_clips_symmetric_cross_entropy():
    g = torch.Generator().manual_seed(0)
    video = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    logits = 10 * video @ text.T
    want = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    torch.testing.assert_close(contrastive_loss(video, text, torch.tensor(10.0)), want)
    assert contrastive_loss(video, video, torch.tensor(50.0)) < 1e-3  # matched pairs, sharp: nothing to learn


def test_retrieval_metrics_rank_both_ways_and_count_any_caption_of_a_video():
    video = torch.eye(4)
    assert retrieval_metrics(video, video.clone(), torch.arange(4))["mean_r1"] == 1.0
    # captions 0 and 1 are video 0's; caption 0 points at video 1, caption 1 at video 0; caption 2 (video 1)
    # points at video 2, caption 3 (video 2) at video 0
    text = torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0.1, 1, 0], [1, 0, 0.5, 0]])
    m = retrieval_metrics(video[:3], text, torch.tensor([0, 0, 1, 2]))
    assert m["t2v_r1"] == 0.25 and m["t2v_r5"] == 1.0  # only caption 1 finds its video first
    assert m["t2v_medr"] == 2.0
    # video 0: its caption 1 ranks first; video 1: caption 0 (0-based rank 0 of 1.0) is video 0's, its own
    # caption 2 scores 0.1, below caption 0's 1.0: rank 1; video 2: caption 2 scores 1.0, own caption 3 0.5: rank 1
    assert m["v2t_r1"] == pytest.approx(1 / 3) and m["v2t_r5"] == 1.0


def test_captions_drawn_per_clip_and_epoch_are_reproducible():
    options = ["a", "b", "c"]
    draws = [[draw_caption(options, 0, e, r) for r in range(30)] for e in range(2)]
    assert draws[0] != draws[1] and set(draws[0]) == set(options)
    assert draws[0] == [draw_caption(options, 0, 0, r) for r in range(30)]


def test_lit_learns_to_pair_tokens_with_their_captions():
    # each clip's tokens carry its colour and shape; its caption names them: retrieval must go far past chance
    g = torch.Generator().manual_seed(0)
    pairs = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    tokens = 0.3 * torch.randn(len(pairs), 1, 4, 16, generator=g)
    for i, (c, s) in enumerate(pairs):
        tokens[i, 0, 0, c] += 3.0
        tokens[i, 0, 1, 8 + s] += 3.0
    captions = [[f"a {COLOURS[c]} {SHAPES[s]}"] for c, s in pairs]
    source = Kept(tokens, torch.arange(len(pairs)))
    torch.manual_seed(0)
    model = LiT(VideoEmbedding("attentive", 16, 32, 2), TextTower(*builtin_text_model(vocabulary(),
                                                                                         width=32, depth=1), 32))
    before = retrieval(model, source, captions, 16, torch.device("cpu"))[0]
    fit(model, with_captions(source.epochs(16, seed=0), captions, model.text, 0), source.steps(16),
        lambda m, *rows: contrastive_loss(*m(*rows)), lambda m: 0.0, epochs=60, lr=3e-3, weight_decay=0.0,
        device=torch.device("cpu"))
    after = retrieval(model, source, captions, 16, torch.device("cpu"))[0]
    assert before["t2v_r5"] < 0.35 and after["t2v_r5"] > 0.8 and after["v2t_r5"] > 0.8, (before, after)


def test_cli_runs_synthetic_lit_with_zero_shot_and_pictures(tiny_checkpoint, tmp_path, capsys):
    common = ["--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:captions:16", "--val-list",
              "synthetic:captions:8", "--epochs", "2", "--batch", "8", "--workers", "0"]
    out = tmp_path / "lit.json"
    assert lit_main(common + ["--zero-shot-list", "synthetic:direction:8", "--json", str(out),
                              "--plot", str(tmp_path / "c.png")]) == 0
    record = json.loads(out.read_text())
    assert len(record["curve"]) == 2 and record["retrieval"]["videos"] == 8 and record["retrieval"]["captions"] == 8
    assert record["curve"][-1] == record["retrieval"]["mean_r1"]  # the result is the last epoch's ranking
    assert record["zero_shot"]["task"] == "direction" and record["zero_shot"]["classes"] == 8
    assert record["data"]["zero-shot"]["seed"] != record["data"]["val"]["seed"]
    assert 0.0 < record["temperature"] and record["features"] == "memory"
    assert Image.open(tmp_path / "c-retrieval.png").size[1] > Image.open(tmp_path / "c.png").size[1]
    assert "text-to-video R@1" in capsys.readouterr().out
    assert lit_main(common + ["--head", "linear", "--features", "stream", "--random-init", "--precision", "bf16",
                              "--json", str(out)]) == 0
    assert "random encoder" in capsys.readouterr().out
    assert json.loads(out.read_text())["settings"]["amp"] == "torch.bfloat16"
    errors = {("--zero-shot-list", "synthetic:direction:8", "--prompt", "no slot"): "one {}",
              ("--text-model", str(tmp_path / "none")): "not a directory",
              ("--zero-shot-list", "synthetic:track:8"): "not a classification task",
              ("--train-list", "synthetic:shape"): "synthetic:KIND[:CLIPS] with KIND one of captions"}
    for extra, message in errors.items():
        assert lit_main(common + list(extra)) == 2
        assert message in capsys.readouterr().err


def test_cli_reads_caption_files_and_a_saved_text_model(tiny_checkpoint, tmp_path, capsys):
    words = ["a", "ball", "moves", "video", "of", "red", "blue", "."]
    tokenizer, model = builtin_text_model(words, width=32, depth=1, heads=2)
    model.save_pretrained(tmp_path / "text")
    tokenizer.save_pretrained(tmp_path / "text")
    paths = [write_video(tmp_path / f"v{i}", frames=10, width=64, height=48) for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"video": p.name, "caption": ["a red ball moves", "red"]})
                                                  + "\n" for p in paths))
    (tmp_path / "val.json").write_text(json.dumps([{"video": p.name, "caption": "a blue ball"} for p in paths[:2]]))
    (tmp_path / "zs.txt").write_text("".join(f"{p.name} {i % 2}\n" for i, p in enumerate(paths)))
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", str(tmp_path / "train.jsonl"), "--val-list",
            str(tmp_path / "val.json"), "--root", str(tmp_path), "--epochs", "1", "--batch", "4", "--workers", "0",
            "--text-model", str(tmp_path / "text"), "--zero-shot-list", str(tmp_path / "zs.txt"),
            "--segments", "2"]
    assert lit_main(args) == 2
    assert "needs --class-names" in capsys.readouterr().err
    (tmp_path / "names.txt").write_text("red\n")
    assert lit_main(args + ["--class-names", str(tmp_path / "names.txt")]) == 2
    assert "names 1 classes" in capsys.readouterr().err
    (tmp_path / "names.txt").write_text("red\nblue\n")
    out = tmp_path / "lit.json"
    assert lit_main(args + ["--class-names", str(tmp_path / "names.txt"), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["retrieval"]["videos"] == 2 and record["zero_shot"]["classes"] == 2
    assert record["data"]["val"]["segments"] == 2 and record["data"]["train"]["videos"] == 4


def test_two_processes_train_lit_as_one_does(tiny_checkpoint, tmp_path):
    def run(nproc: int) -> dict:
        out = tmp_path / f"{nproc}.json"
        torchrun("ivn_fast.lit", nproc, "--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:captions:24",
                 "--val-list", "synthetic:captions:12", "--epochs", "2", "--batch", "8", "--workers", "0",
                 "--features", "stream", "--lr", "2e-3", "--json", str(out))
        return json.loads(out.read_text())

    one, two = run(1), run(2)
    torch.testing.assert_close(torch.tensor(two["train_loss"]), torch.tensor(one["train_loss"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(two["curve"]), torch.tensor(one["curve"]))
    assert two["retrieval"]["videos"] == one["retrieval"]["videos"] == 12


def _contrast_on_two_processes(rank: int, path: str, video: torch.Tensor, text: torch.Tensor) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    mine = slice(0, 3) if rank == 0 else slice(3, 5)  # shares of 3 and 2 pairs
    v, t = video[mine].clone().requires_grad_(), text[mine].clone().requires_grad_()
    loss = contrastive_loss(v, t, torch.tensor(5.0))
    loss.backward()
    torch.save({"loss": loss.detach(), "video": v.grad, "text": t.grad}, f"{path}.{rank}")
    dist.destroy_process_group()


def test_contrastive_loss_over_unequal_shares_of_two_processes_is_the_whole_batchs(tmp_path):
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(1)
    video = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    mp.spawn(_contrast_on_two_processes, args=(str(tmp_path / "pg"), video, text), nprocs=2)
    parts = [torch.load(tmp_path / f"pg.{r}") for r in range(2)]
    v, t = video.clone().requires_grad_(), text.clone().requires_grad_()
    whole = contrastive_loss(v, t, torch.tensor(5.0))
    whole.backward()
    # DDP averages the processes' gradients: the mean of their losses, and twice each one's input gradient
    torch.testing.assert_close((parts[0]["loss"] + parts[1]["loss"]) / 2, whole.detach())
    torch.testing.assert_close(torch.cat([p["video"] for p in parts]) / 2, v.grad)
    torch.testing.assert_close(torch.cat([p["text"] for p in parts]) / 2, t.grad)


def test_built_in_words_cover_the_runs_own_captions():
    words = vocabulary(["A zebra grazes, slowly.", "north-east"])
    assert {"zebra", "grazes", "slowly", ",", ".", "north", "-", "east", "star"} <= set(words)
    assert words == sorted(set(words)) and vocabulary() == [w for w in words if w in vocabulary()]
