"""Build the offline demo's pretrained stand-ins: ``python -m clip_jax.demo.pretrain [--cache_dir DIR]``.

Prints where each one is and how its pretraining went. ``python train.py`` builds them on first use
anyway; this command is for building them ahead of time or rebuilding them (``--rebuild``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from clip_jax.demo.standins import STANDINS, EnglishCLIPSettings, ItalianBertSettings, standin_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clip_jax.demo.pretrain", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--cache_dir", default="~/.cache/clip_jax", help="Where stand-ins are cached.")
    parser.add_argument("--only", choices=sorted(STANDINS), help="Build only this stand-in.")
    parser.add_argument("--rebuild", action="store_true", help="Delete the cached stand-in(s) first.")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    defaults = {"english-clip": EnglishCLIPSettings(), "italian-bert": ItalianBertSettings()}
    for name in [args.only] if args.only else list(STANDINS):
        if args.rebuild:
            shutil.rmtree(standin_dir(name, defaults[name], args.cache_dir), ignore_errors=True)
        path = STANDINS[name](args.cache_dir)
        info = json.loads((path / "standin.json").read_text())
        print(f"{name}: {path} (built in {info['build_seconds']}s)")
        if "mlm_history" in info:
            first, last = info["mlm_history"][0], info["mlm_history"][-1]
            print(
                f"  masked LM: loss {first[1]:.3f} -> {last[1]:.3f}, masked-token accuracy {first[2]:.3f} -> "
                f"{last[2]:.3f} ({info['corpus_sentences']} Italian sentences, no images)"
            )
        if "zero_shot_en_val" in info:
            zs = ", ".join(f"{k} {v['acc1']:.3f}" for k, v in info["zero_shot_en_val"].items())
            losses = info["train_loss"]
            print(
                f"  contrastive loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f}; English zero-shot on its "
                f"validation pictures: {zs}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
