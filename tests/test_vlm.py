"""The video-LLM evaluation: answer targets, the connector's pooling, the frozen model's scores,
multiple-choice items, learning, and the command end to end (one and two processes)."""

import json

import pytest
import torch
from PIL import Image
from torch import nn

from ivn_fast.data.captions import (ASKED, SYNTHETIC_TEMPLATES, Question, read_questions, synthetic_question,
                                    vocabulary)
from ivn_fast.data.lists import ListError
from ivn_fast.data.synthetic import COLOURS, SHAPES, SyntheticVideos
from ivn_fast.features import Kept
from ivn_fast.fit import fit
from ivn_fast.models.llm import builtin_causal_lm
from ivn_fast.models.text import word_tokenizer
from ivn_fast.vlm import Connector, VideoLLM, answer, caption_batches, text_batch
from ivn_fast.vlm import main as vlm_main
from launch import torchrun
from video_helpers import write_video


def test_answer_tokens_follow_the_prompt():
    tokenizer = word_tokenizer(["describe", "the", "video", ".", "a", "red", "star"], 16)
    ids, mask, target = text_batch(tokenizer, ["describe the video .", "describe"], ["a red star", "a star"])
    words = [tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
    assert [w for w, t in zip(words[0], target[0]) if t] == ["a", "red", "star", "[EOS]"]
    assert [w for w, t in zip(words[1], target[1]) if t] == ["a", "star", "[EOS]"]
    assert not (target & (mask == 0)).any()  # padding is never a target


def test_connector_pools_each_frames_patches():
    connector = Connector(4, 4, grid=(2, 4, 4), num_cls=1, side=2)
    connector.mlp = nn.Identity()
    patches = torch.arange(2 * 16, dtype=torch.float32).view(1, 2, 4, 4, 1).expand(-1, -1, -1, -1, 4)
    tokens = torch.cat([torch.full((1, 1, 4), -100.0), patches.reshape(1, 32, 4)], 1)  # a CLS token in front
    out = connector(tokens)
    assert out.shape == (1, 8, 4)
    first_frame = patches[0, 0, :, :, 0]
    want = [first_frame[:2, :2].mean(), first_frame[:2, 2:].mean(), first_frame[2:, :2].mean(), first_frame[2:, 2:].mean()]
    torch.testing.assert_close(out[0, :4, 0], torch.stack(want))


def test_scores_are_the_frozen_models_log_probabilities():
    words = ["describe", "the", "video", ".", "a", "red", "star"]
    tokenizer, lm = builtin_causal_lm(words, ["describe the video . a red star"], steps=0, seed=0, width=32)
    model = VideoLLM(Connector(8, 32, (1, 2, 2), 0, 1), lm)
    ids, mask, target = text_batch(tokenizer, ["describe the video ."], ["a red star"])
    logp, count = model(None, ids, mask, target)
    want = lm(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0][target[0, 1:]].sum()
    torch.testing.assert_close(logp[0], want)
    assert count.item() == 4 and not any(p.requires_grad for p in model.lm.parameters())
    with_clip, _ = model(torch.randn(1, 4, 8), ids, mask, target)
    assert with_clip[0] != logp[0]  # the clip's tokens change what the model expects
    model.train()
    assert model.connector.training and not model.lm.training


def test_synthetic_questions_change_one_word_and_go_round_the_words():
    videos = SyntheticVideos(8, 4, 32, seed=2)
    for i in range(8):
        q = synthetic_question(videos, i, "describe the video .")
        true = q.options[q.answer]
        assert q.kind == ASKED[i % 4] and len(q.options) == len(set(q.options)) == (3 if q.kind == "speed" else 4)
        assert true.split()[:2] == ["a", "small"] or true.split()[:2] == ["a", "large"]
        for option in q.options:
            changed = [(a, b) for a, b in zip(option.split(), true.split()) if a != b]
            assert option == true or len(changed) <= 2  # one word (a direction like north-east counts as one)
    assert {synthetic_question(videos, i, "p").answer for i in range(8)} != {0}
    assert SYNTHETIC_TEMPLATES[0].startswith("a {size}")


def test_question_files_take_an_answer_by_index_or_text(tmp_path):
    (tmp_path / "q.jsonl").write_text(
        json.dumps({"video": "v.mp4", "question": "what moves?", "options": ["a dog", "a cat"], "answer": 1}) + "\n" +
        json.dumps({"video": "w.mp4", "question": "colour?", "candidates": ["red", "blue", "green"],
                    "answer": "green", "start": 1, "end": 2}) + "\n")
    videos, questions = read_questions([str(tmp_path / "q.jsonl")], root="/d")
    assert [q.answer for q in questions] == [1, 2] and videos[1].path == "/d/w.mp4" and videos[1].start == 1.0
    for bad, message in (({"video": "v", "question": "q", "options": ["x"], "answer": 0}, "two or more"),
                         ({"video": "v", "question": "q", "options": ["x", "y"], "answer": 2}, "'answer' must be"),
                         ({"video": "v", "question": "q", "options": ["x", "y"], "answer": "z"}, "'answer' must be")):
        (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
        with pytest.raises(ListError, match=f"bad.jsonl:1: .*{message}"):
            read_questions([str(tmp_path / "bad.jsonl")])


def test_the_connector_learns_to_make_the_language_model_describe_the_tokens():
    # tokens carry each clip's colour and shape; the frozen model knows the captions' language but not
    # which caption a clip has: after training, multiple choice on the colour goes far past the blind prior
    g = torch.Generator().manual_seed(0)
    pairs = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    tokens = 0.3 * torch.randn(len(pairs), 1, 5, 16, generator=g)
    for i, (c, s) in enumerate(pairs):
        tokens[i, 0, 1:, c] += 3.0
        tokens[i, 0, 1:, 8 + s] += 3.0
    captions = [[f"a {COLOURS[c]} {SHAPES[s]}"] for c, s in pairs]
    tokenizer, lm = builtin_causal_lm(vocabulary() + ["describe", "the", "video", "."],  # as --llm builtin
                                      [f"{c[0]} describe the video . {c[0]}" for c in captions], steps=150, seed=0,
                                      width=64)
    tokenizer.padding_side = "right"
    torch.manual_seed(0)
    model = VideoLLM(Connector(16, 64, (1, 2, 2), 1, 1), lm)
    source = Kept(tokens, torch.arange(len(pairs)), batch=16)
    questions = []
    for i, (c, s) in enumerate(pairs):
        options = [f"a {COLOURS[(c + k) % len(COLOURS)]} {SHAPES[s]}" for k in range(4)]
        questions.append(Question("describe the video .", options, 0, "colour"))
    cpu = torch.device("cpu")
    blind = answer(model, source, questions, tokenizer, cpu)["blind_accuracy"]
    fit(model, caption_batches(source.epochs(16, 0), captions, tokenizer, "describe the video .", 0),
        source.steps(16), lambda m, *rows: -(lambda lp, n: lp.sum() / n.sum())(*m(*rows)), lambda m: 0.0,
        epochs=40, lr=3e-3, weight_decay=0.0, device=cpu,
        optimizer=torch.optim.AdamW(model.connector.parameters(), lr=3e-3))
    after = answer(model, source, questions, tokenizer, cpu)
    assert after["accuracy"] > max(blind + 0.3, 0.6), (blind, after)  # 0.73 against 0.25 when written
    assert after["accuracy_colour"] == after["accuracy"]
    assert after["blind_accuracy"] == blind  # the prior does not move: only the connector trained


def test_cli_runs_on_synthetic_captions_with_questions_and_pictures(tiny_checkpoint, tmp_path, capsys):
    common = ["--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:captions:16", "--val-list",
              "synthetic:captions:8", "--epochs", "2", "--batch", "8", "--workers", "0", "--lm-steps", "10"]
    out = tmp_path / "vlm.json"
    assert vlm_main(common + ["--mcq-list", "synthetic:mcq:8", "--tokens-per-frame", "4", "--json", str(out),
                              "--plot", str(tmp_path / "v.png")]) == 0
    record = json.loads(out.read_text())
    assert len(record["curve"]) == 2 and record["visual_tokens"] == 4 * 4 and record["mcq"]["questions"] == 8
    assert 0 <= record["mcq"]["blind_accuracy"] <= 1 and set(ASKED) <= {k[9:] for k in record["mcq"]}
    assert record["data"]["mcq"]["seed"] not in (record["data"]["val"]["seed"], record["data"]["train"]["seed"])
    assert Image.open(tmp_path / "v-captions.png").size[1] > 4 * 112
    assert "multiple choice" in capsys.readouterr().out
    for extra, message in ((["--tokens-per-frame", "3"], "not a square number"),
                           (["--tokens-per-frame", "100"], "exceeds a frame's 64 tokens"),
                           (["--llm", str(tmp_path / "none")], "not a directory"),
                           (["--mcq-list", "synthetic:shape"], "with KIND one of mcq")):
        assert vlm_main(common + extra) == 2
        assert message in capsys.readouterr().err


def test_cli_reads_caption_and_question_files_with_a_saved_language_model(tiny_checkpoint, tmp_path):
    words = ["describe", "the", "video", ".", "a", "red", "blue", "ball", "what", "colour", "?"]
    tokenizer, lm = builtin_causal_lm(words, ["describe the video . a red ball"], steps=0, seed=0, width=32)
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    paths = [write_video(tmp_path / f"v{i}", frames=10, width=64, height=48) for i in range(3)]
    (tmp_path / "cap.jsonl").write_text("".join(json.dumps({"video": p.name, "caption": "a red ball"}) + "\n"
                                                for p in paths))
    (tmp_path / "q.json").write_text(json.dumps([{"video": p.name, "question": "what colour ?", "options": ["red", "blue"],
                                                  "answer": "red"} for p in paths]))
    out = tmp_path / "vlm.json"
    assert vlm_main(["--checkpoint", str(tiny_checkpoint), "--train-list", str(tmp_path / "cap.jsonl"), "--val-list",
                     str(tmp_path / "cap.jsonl"), "--mcq-list", str(tmp_path / "q.json"), "--root", str(tmp_path),
                     "--llm", str(tmp_path / "lm"), "--epochs", "1", "--batch", "3", "--workers", "0",
                     "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["mcq"]["questions"] == 3 and "accuracy_shape" not in record["mcq"]


def test_two_processes_train_the_connector_as_one_does(tiny_checkpoint, tmp_path):
    def run(nproc: int) -> dict:
        out = tmp_path / f"{nproc}.json"
        torchrun("ivn_fast.vlm", nproc, "--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:captions:16",
                 "--val-list", "synthetic:captions:6", "--mcq-list", "synthetic:mcq:6", "--epochs", "2", "--batch",
                 "8", "--workers", "0", "--lm-steps", "10", "--features", "stream", "--json", str(out))
        return json.loads(out.read_text())

    one, two = run(1), run(2)
    for key in ("curve", "train_loss"):
        torch.testing.assert_close(torch.tensor(two[key]), torch.tensor(one[key]), rtol=1e-4, atol=1e-5)
    assert two["mcq"] == one["mcq"]
