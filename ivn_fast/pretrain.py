"""Pretraining entry point: ``torchrun -m ivn_fast.pretrain`` (or ``python -m ivn_fast.pretrain``).

With no arguments it trains Stage 1 of the tiny preset on the built-in synthetic clips.
Settings come from, in order: the defaults, ``--preset``, ``--config FILE``, then dotted
overrides such as ``--model.encoder.depth 6`` (dashes and underscores are interchangeable).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ivn_fast.config import (
    DEFAULT_PRESET,
    PRESETS,
    Config,
    ConfigError,
    build_config,
    dumps,
    fields_flat,
    load_file,
    run_dir,
    set_dotted,
    validate,
)

log = logging.getLogger("ivn_fast")


def build_parser() -> argparse.ArgumentParser:
    presets = "\n".join(f"  {name:16s} {desc}" for name, (desc, _) in PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m ivn_fast.pretrain",
        description="Pretrain an InternVideo-Next video encoder. Stage 1: semantic-guided pixel reconstruction; "
                    "Stage 2 (--stage 2): latent prediction against the frozen Stage 1 model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"presets:\n{presets}\n\nExample: torchrun --nproc-per-node 8 -m ivn_fast.pretrain --preset vit-b "
               "--model.teacher.path /weights/siglip2-giant-opt-patch16-256",
    )
    parser.add_argument("--preset", default=DEFAULT_PRESET, metavar="NAME",
                        help=f"starting point for every setting (default: {DEFAULT_PRESET}; list below)")
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of settings, applied over the preset")
    parser.add_argument("--max-steps", metavar="N", help="same as --train.max_steps")
    parser.add_argument("--stage", metavar="N", help="same as --train.stage: 2 continues from Stage 1 with the "
                                                     "preset's Stage 2 settings")
    parser.add_argument("--init", metavar="DIR", help="same as --stage2.init: the Stage 1 checkpoint Stage 2 "
                                                     "starts from (default: the newest in OUTPUT_DIR/checkpoints)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint of this stage (OUTPUT_DIR/checkpoints, or "
                             "OUTPUT_DIR/stage2/checkpoints) at the exact step, LR, data order and random state")
    parser.add_argument("--profile", action="store_true", help="same as --train.profile true")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    defaults = Config()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f, tp in fields_flat():
        section = name.rsplit(".", 1)[0] if "." in name else "run"
        group = groups.setdefault(section, parser.add_argument_group(f"{section} settings"))
        value = defaults
        for part in name.split("."):
            value = getattr(value, part)
        choices = f" {{{','.join(f.metadata['choices'])}}}" if "choices" in f.metadata else ""
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        group.add_argument(*flags, dest=f"set:{name}", metavar=getattr(tp, "__name__", "VALUE").upper(),
                           default=argparse.SUPPRESS,
                           help=f"{f.metadata['help']}{choices} (base default: {value!r})")
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Resolve the config from the command line; raises ConfigError on a bad value."""
    args = build_parser().parse_args(argv)
    overrides: dict = {}
    for key, value in vars(args).items():
        if key.startswith("set:"):
            set_dotted(overrides, key[4:], value)
    for flag, dotted in (("max_steps", "train.max_steps"), ("stage", "train.stage"), ("init", "stage2.init")):
        if getattr(args, flag) is not None:
            set_dotted(overrides, dotted, getattr(args, flag))
    if args.profile:
        set_dotted(overrides, "train.profile", True)
    trees = [load_file(args.config)] if args.config else []
    cfg = build_config(args.preset, *trees, overrides)
    return cfg, args


def _fail(error: Exception, status: int) -> int:
    """One line on stderr and in train.log, the processes shut down, the exit status. An error
    raised in a data worker arrives with the worker's traceback in its text: only its message is
    printed."""
    from ivn_fast.train.distributed import shutdown

    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    print(f"ivn_fast.pretrain: error: {text}", file=sys.stderr)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:  # the log file only: stdout would repeat stderr
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    shutdown()
    return status


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, args = parse_config(argv)
        if args.print_config:
            print(dumps(cfg))
            return 0
        validate(cfg)
    except ConfigError as e:
        print(f"ivn_fast.pretrain: error: {e}", file=sys.stderr)
        return 2

    # a fragmented caching allocator is what runs out of memory first on varying token counts
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    from ivn_fast.models.attention_table import configure as configure_attention
    from ivn_fast.train.distributed import broadcast_object, init_distributed, shutdown
    from ivn_fast.data.health import TooManyBadSamples
    from ivn_fast.data.lists import ListError
    from ivn_fast.train.checkpoint import CheckpointError
    from ivn_fast.train.metrics import setup_logging
    from ivn_fast.train.trainer import Trainer, resolve_device
    from ivn_kernels import set_kernels

    try:
        device = resolve_device(cfg.train.device)
    except ValueError as e:
        print(f"ivn_fast.pretrain: error: {e}", file=sys.stderr)
        return 2
    world = init_distributed(device.type)
    out_dir = str(run_dir(cfg))
    setup_logging(world.is_main, out_dir)
    set_kernels(cfg.train.kernels)
    log.info("preset %s, %d process(es), device %s, torch %s", args.preset, world.size, device, torch.__version__)
    try:
        log.info(configure_attention(cfg.train.attention, device, is_main=world.is_main, share=broadcast_object))
    except ValueError as e:  # a named backend this machine cannot run
        return _fail(e, 2)
    try:
        trainer = Trainer(cfg, world, resume=args.resume)
    except (CheckpointError, ListError) as e:
        return _fail(e, 2)
    except TooManyBadSamples as e:  # the picture batch is read while the trainer is built
        return _fail(e, 3)
    if world.is_main:  # only now: a refused resume leaves the checkpoints' config.json as it was
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            f.write(dumps(cfg))
    start = time.perf_counter()
    try:
        final = trainer.train()
    except TooManyBadSamples as e:
        return _fail(e, 3)
    if world.is_main and final:
        loss = "-" if final["loss"] is None else f"{final['loss']:.4f}"  # None: the last window was all skipped
        log.info("done in %.1f s: step %d, loss %s; outputs in %s", time.perf_counter() - start,
                 final["step"], loss, out_dir)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
