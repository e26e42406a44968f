"""WiSE-FT (Wortsman et al. 2022): towers interpolated between where a run started and where it ended.

    clip-jax export --checkpoint runs/it --out exported/it-wise50 --interpolate 0.5

writes towers ``(1 - alpha) * start + alpha * fine_tuned`` with the fine-tuned projections and temperature
(the projections of a run that built fresh ones have no meaningful start). ``start`` is the model the run
started from, rebuilt from what its workdir recorded (``model.vision``/``model.text``, or ``model.init_from``),
or another model given explicitly. ``alpha = 0`` keeps the pretrained towers (nothing forgotten),
``alpha = 1`` is the fine-tuned model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clip_jax.clip_model import CLIPModel

TOWERS = ("vision", "text")


def run_start(workdir: str) -> CLIPModel:
    """The model the training run in ``workdir`` started from, rebuilt from its recorded config: its
    pretrained towers (or ``model.init_from``) and the projections its seed initialised."""
    from clip_jax.loading import training_config
    from clip_jax.train.model import build_model

    return build_model(training_config(workdir))


def interpolate_towers(start: CLIPModel, fine_tuned: CLIPModel, alpha: float) -> CLIPModel:
    """``fine_tuned`` with each tower's parameters replaced by ``(1 - alpha) * start + alpha * fine_tuned``
    (its projections, temperature, tokenizer and image processor kept). Raise ``ValueError`` where the towers'
    parameters differ in names or shapes."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"--interpolate {alpha} is outside [0, 1] — give the fine-tuned weights' share, e.g. 0.5"
        )
    module = nnx.clone(fine_tuned.module)
    for tower in TOWERS:
        old = nnx.state(getattr(start.module, tower), nnx.Param)
        new = nnx.state(getattr(module, tower), nnx.Param)
        shapes = lambda s: {
            jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(s)[0]
        }
        if shapes(old) != shapes(new):
            differ = sorted(set(shapes(old).items()) ^ set(shapes(new).items()))[:4]
            raise ValueError(
                f"the start's {tower} tower does not match the fine-tuned one (e.g. {differ}) — interpolate "
                "between models of the same architecture (pass the run's own start with --start)"
            )
        mixed = jax.tree.map(
            lambda a, b: (
                (1.0 - alpha) * jnp.asarray(a, jnp.float32) + alpha * jnp.asarray(b, jnp.float32)
            ).astype(b.dtype),
            old,
            new,
        )
        nnx.update(getattr(module, tower), mixed)
    mixed_model = CLIPModel(
        module,
        tokenizer=fine_tuned.tokenizer,
        image_processor=fine_tuned.image_processor,
        max_length=fine_tuned.max_length,
    )
    mixed_model.base_models = list(fine_tuned.base_models)
    return mixed_model
