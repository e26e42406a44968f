"""Train a CLIP dual encoder: `python train.py --config clip_italian --workdir runs/it` (a checkout's
spelling of `clip-jax train`; see `clip_jax/cli.py`).

With no arguments it runs the offline demo recipe in runs/demo. Running again with the same --workdir
resumes from the latest checkpoint. Override any config key on the command line, e.g.
--config.train.batch_size=4096; --print_config shows the result; --debug shows tracebacks.
"""

import sys

from clip_jax.cli import console

if __name__ == "__main__":
    console(["train", *sys.argv[1:]])
