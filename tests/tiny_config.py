"""Tiny random towers on the demo's shapes data (for tests that run train.py): fast, learns little."""

from clip_jax.demo import random_towers_config


def get_config():
    return random_towers_config()
