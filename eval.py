"""Evaluate CLIP models: a checkout's spelling of `clip-jax eval` (see `clip_jax/evaluate/cli.py`).

    python eval.py --model runs/it --task zeroshot --dataset imagefolder:/data/cifar10/test \\
        --classnames it:cifar10 --templates it:cifar10
"""

import sys

from clip_jax.evaluate.cli import main, parse_args  # noqa: F401 (tests and scripts import them from here)

if __name__ == "__main__":
    from clip_jax.cli import console

    console(["eval", *sys.argv[1:]])
