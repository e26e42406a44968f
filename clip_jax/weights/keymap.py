"""Tables that map Hugging Face (PyTorch) parameter names to our parameter paths.

A :class:`KeyMap` is data: a list of :class:`Rule` s, each pairing a PyTorch name
template with our path template and a :class:`Transform` that turns the PyTorch
array into ours (and back, for export). Templates use ``{i}`` for a layer index, e.g.
``encoder.layers.{i}.self_attn.q_proj.weight`` <-> ``layers.{i}.attention.query.kernel``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

import numpy as np

Path = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
    """How a PyTorch array becomes ours: an optional axis permutation, then a reshape.

    ``forward`` needs our target shape (to split fused heads); ``inverse`` undoes it and
    needs ``merged`` to know which of our axes were split out of one PyTorch axis.
    """

    name: str
    permutation: tuple[int, ...] | None = None
    # For inverse: how to group our axes back into PyTorch's (before un-permuting).
    merged: tuple[tuple[int, ...], ...] | None = None

    def forward(self, array: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
        if self.permutation is not None:
            array = np.transpose(array, self.permutation)
        if array.shape != tuple(target_shape) and array.size == int(np.prod(target_shape)) and self.merged:
            array = array.reshape(target_shape)
        return array

    def inverse(self, array: np.ndarray) -> np.ndarray:
        if self.merged is not None:
            shape = tuple(int(np.prod([array.shape[a] for a in group])) for group in self.merged)
            array = array.reshape(shape)
        if self.permutation is not None:
            array = np.transpose(array, np.argsort(self.permutation))
        return array


IDENTITY = Transform("identity")
#: ``nn.Linear.weight [out, in]`` -> kernel ``[in, out]``.
LINEAR = Transform("linear", permutation=(1, 0))
#: q/k/v ``[heads*head_dim, embed]`` -> ``[embed, heads, head_dim]``.
HEADS_IN = Transform("heads_in", permutation=(1, 0), merged=((0,), (1, 2)))
#: q/k/v bias ``[heads*head_dim]`` -> ``[heads, head_dim]``.
HEADS_BIAS = Transform("heads_bias", merged=((0, 1),))
#: attention output ``[embed, heads*head_dim]`` -> ``[heads, head_dim, embed]``.
HEADS_OUT = Transform("heads_out", permutation=(1, 0), merged=((0, 1), (2,)))
#: ``nn.Conv2d.weight [out, in, kh, kw]`` -> ``[kh, kw, in, out]``.
CONV = Transform("conv", permutation=(2, 3, 1, 0))


@dataclasses.dataclass(frozen=True)
class Rule:
    """One PyTorch name template, our path template, and the transform between them."""

    torch: str
    ours: str
    transform: Transform = IDENTITY


def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def _to_path(dotted: str) -> Path:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def path_to_str(path: Path) -> str:
    """``('layers', 0, 'mlp')`` -> ``'layers.0.mlp'``."""
    return ".".join(str(p) for p in path)


class KeyMap:
    """A bidirectional name map between a PyTorch state dict and our parameter paths."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules = tuple(rules)
        self._torch_res = [(_template_regex(r.torch), r) for r in self.rules]
        self._ours_res = [(_template_regex(r.ours), r) for r in self.rules]

    def prefixed(self, torch_prefix: str, ours_prefix: str) -> KeyMap:
        """This map with ``torch_prefix`` before every PyTorch name and ``ours_prefix`` before every path."""
        return KeyMap(Rule(torch_prefix + r.torch, ours_prefix + r.ours, r.transform) for r in self.rules)

    def __add__(self, other: KeyMap) -> KeyMap:
        return KeyMap(self.rules + other.rules)

    def to_ours(self, torch_name: str) -> tuple[Path, Transform] | None:
        """Our path and transform for a PyTorch name (without the tower prefix), or None."""
        for regex, rule in self._torch_res:
            match = regex.match(torch_name)
            if match:
                return _to_path(rule.ours.format(**match.groupdict())), rule.transform
        return None

    def to_torch(self, path: Path) -> tuple[str, Transform]:
        """The PyTorch name and transform for one of our parameter paths."""
        dotted = path_to_str(path)
        for regex, rule in self._ours_res:
            match = regex.match(dotted)
            if match:
                return rule.torch.format(**match.groupdict()), rule.transform
        raise KeyError(f"No export rule for parameter {dotted!r}; add one to the architecture's KeyMap.")

    def export(self, params: Mapping[Path, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
        """Our flat parameters -> a PyTorch-named state dict (arrays made contiguous)."""
        out = {}
        for path, array in params.items():
            name, transform = self.to_torch(path)
            out[prefix + name] = np.array(transform.inverse(np.asarray(array)), order="C")
        return out
