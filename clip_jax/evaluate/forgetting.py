"""Forgetting: how a fine-tuned vision tower serves the model it came from.

    clip-jax eval --task zeroshot --model runs/it --reference openai/clip-vit-base-patch32 \\
        --dataset imagefolder:/data/cifar10/test --classnames en:cifar10 --templates en:cifar10

evaluates the original model (``--reference``) as it is, and with each ``--model``'s vision tower in place of
its own (its text tower, projections and temperature kept): the drop is what fine-tuning cost the tower's
original users. The class names and templates are in the original model's language.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from clip_jax.clip_model import CLIPModel


def with_vision_tower(model: CLIPModel, vision_tower: nnx.Module, *, mesh: Mesh | None = None) -> CLIPModel:
    """``model`` with ``vision_tower`` in place of its own (``model``'s image processor kept; neither is
    changed: the new model shares their arrays). ``mesh``: embed there (both models' parameters live on it)."""
    module = nnx.merge(*nnx.split(model.module))
    module.vision = nnx.merge(*nnx.split(vision_tower))
    return CLIPModel(
        module,
        tokenizer=model.tokenizer,
        image_processor=model.image_processor,
        max_length=model.max_length,
        mesh=mesh,
    )


def check_fits(reference: CLIPModel, model: CLIPModel, name: str, reference_name: str) -> None:
    """Raise ``ValueError`` unless ``model``'s vision tower has the input and output sizes of ``reference``'s."""
    a, b = reference.module.vision.config, model.module.vision.config
    have = lambda c: (c.hidden_size, c.image_size, c.patch_size)
    if have(a) != have(b):
        raise ValueError(
            f"{name}'s vision tower (width, image size, patch) {have(b)} does not fit {reference_name}'s {have(a)} — "
            "--reference must be the model whose vision tower --model was fine-tuned from"
        )


def reference_models(
    specs: list[str], reference: str, logit_scale: float | None = None
) -> Iterator[tuple[str, CLIPModel]]:
    """(name, model) to evaluate: ``reference`` itself, then ``reference`` with each spec's vision tower."""
    from clip_jax.loading import load_model

    original = load_model(reference, logit_scale=logit_scale)
    yield reference, original
    for spec in specs:
        model = load_model(spec)
        check_fits(original, model, spec, reference)
        yield f"{spec} (vision) in {reference}", with_vision_tower(original, model.module.vision)


def forgetting_lines(results: list[dict[str, Any]], metric: str = "acc1") -> list[str]:
    """One line per fine-tuned vision tower: the reference's own score, the score with that tower, the change."""
    if not results or metric not in results[0]["metrics"]:
        return []
    own = results[0]["metrics"][metric]
    return [
        f"forgetting ({metric}): {results[0]['pretrained']} {own:.4f} → {r['pretrained']} "
        f"{r['metrics'][metric]:.4f} ({r['metrics'][metric] - own:+.4f})"
        for r in results[1:]
    ]
