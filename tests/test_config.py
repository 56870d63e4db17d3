import pytest

from ivn_fast.config import PRESETS, Config, ConfigError, build_config, fields_flat, from_dict, to_dict, validate
from ivn_fast.pretrain import build_parser, main, parse_config


def test_every_field_has_help_and_a_flag():
    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for name, f, _ in fields_flat():
        assert f.metadata["help"], name
        assert f"--{name}" in flags


def test_presets_match_the_paper_settings():
    abl = build_config("vit-b-ablation")
    assert (abl.model.encoder.embed_dim, abl.model.encoder.depth, abl.data.num_frames) == (768, 12, 8)
    assert "siglip2-large" in abl.model.teacher.path and abl.train.batch_size == 1024
    b, l = build_config("vit-b"), build_config("vit-l")
    assert (b.data.num_frames, b.train.batch_size, l.model.encoder.embed_dim, l.model.encoder.depth) == (16, 2048, 1024, 24)
    assert "giant" in b.model.teacher.path and b.model.predictor.num_layers == 5
    # 50 epochs of 1.1M clips at batch 2048, 5 of them warmup
    assert b.train.max_steps == (1_100_000 // 2048) * 50 and b.optim.warmup_steps == (1_100_000 // 2048) * 5
    assert l.model.encoder.drop_path == 0.2 and b.model.encoder.drop_path == 0.1
    # the released launch scripts: mask ratio 0.75 / 0.7, 62 epochs with 7 of warmup, ViT-L a ViT-L
    rb, rl = build_config("vit-b-released"), build_config("vit-l-released")
    assert (b.mask.ratio, rb.mask.ratio, rl.mask.ratio) == (0.8, 0.75, 0.7)
    assert rb.train.max_steps == (1_100_000 // 2048) * 62 and rb.optim.warmup_steps == (1_100_000 // 2048) * 7
    assert rl.model.encoder.depth == 24 and rl.model.encoder.drop_path == 0.2
    for name in PRESETS:
        validate(build_config(name), check_paths=False)


def test_dotted_overrides_with_dashes_and_types():
    cfg, _ = parse_config(["--model.encoder.depth", "3", "--mask.ratio", "0.75", "--model.predictor.init", "false",
                           "--data.num-frames", "4", "--max-steps", "7", "--output_dir", "x"])
    assert cfg.model.encoder.depth == 3 and cfg.mask.ratio == 0.75 and cfg.model.predictor.init is False
    assert cfg.data.num_frames == 4 and cfg.train.max_steps == 7 and cfg.output_dir == "x"


def test_config_files(tmp_path):
    (tmp_path / "a.toml").write_text('[model.encoder]\ndepth = 2\n[train]\nmax_steps = 9\n')
    (tmp_path / "b.yaml").write_text('mask:\n  kind: tube\n')
    cfg, _ = parse_config(["--config", str(tmp_path / "a.toml"), "--train.max_steps", "11"])
    assert cfg.model.encoder.depth == 2 and cfg.train.max_steps == 11  # command line wins over the file
    cfg, _ = parse_config(["--config", str(tmp_path / "b.yaml")])
    assert cfg.mask.kind == "tube"


def test_round_trip():
    cfg = build_config("vit-l")
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


@pytest.mark.parametrize("args, field", [
    (["--model.encoder.depth", "0"], "model.encoder.depth"),
    (["--mask.ratio", "1.5"], "mask.ratio"),
    (["--mask.kind", "nope"], "mask.kind"),
    (["--data.size", "100"], "data.size"),
    (["--model.encoder.num_heads", "5"], "model.encoder.embed_dim"),
    (["--train.batch_size", "two"], "train.batch_size"),
    (["--model.teacher.path", "/no/such/teacher"], "model.teacher.path"),
    (["--preset", "vit-b"], "model.teacher.path"),  # weights directories of the paper presets are absent
    (["--model.predictor.path", "/no/such/bert"], "model.predictor.path"),
    (["--train.activation_checkpointing", "budget"], "train.compile"),  # the compiler's choice needs compile
    (["--train.ac_budget", "1.5"], "train.ac_budget"),
])
def test_bad_values_fail_with_one_line_naming_the_field(args, field, capsys):
    assert main(args + ["--output_dir", "/tmp/ivn-never-written"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err


def test_unknown_field_and_preset():
    with pytest.raises(ConfigError, match="model.encoder.nope"):
        build_config("tiny", {"model": {"encoder": {"nope": 1}}})
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("vit-z")


def test_help_lists_presets_and_fields(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for name in PRESETS:
        assert name in text
    assert "--model.decoder.batch_mul" in text and "diffusion_batch_mul" in text


def test_defaults_are_the_released_recipe():
    c = Config()
    assert (c.optim.beta1, c.optim.beta2, c.optim.eps, c.optim.weight_decay, c.optim.grad_clip) == (0.9, 0.98, 1e-6, 0.05, 5.0)
    assert (c.model.decoder.width, c.model.decoder.depth, c.model.decoder.batch_mul) == (1536, 6, 1)
    assert c.mask.ratio == 0.8 and c.model.encoder.num_cls == 4 and c.model.teacher.num_layers == 6
