"""Tiny *random* towers on the demo's shapes data: for smoke tests and trying the command line quickly.

`clip-jax train --config tiny` trains in seconds, but random towers carry nothing for phase 1 to align:
use the `demo` recipe to see the two-phase recipe work.
"""

from clip_jax.demo import random_towers_config


def get_config():
    return random_towers_config()
