"""``python -m clip_jax.plan ...``: the same as ``clip-jax plan ...``."""

import sys

from clip_jax.cli import console

console(["plan", *sys.argv[1:]])
