"""Embedding maps: a 2-D UMAP of image embeddings coloured by class, with each class's text embedding
(single prompt: hollow star; template mean: filled star) in the same map; and, per layer of the
vision tower, a map of its intermediate class-token features, showing how classes separate with depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clip_jax.extras import require


def project_2d(points: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """``[N, D] -> [N, 2]`` with UMAP (cosine metric; needs umap-learn) or PCA."""
    if method == "umap":
        umap = require("umap", "Embedding maps with UMAP (or use --projection pca)")
        neighbours = max(2, min(15, len(points) - 1))
        return umap.UMAP(n_neighbors=neighbours, metric="cosine", random_state=seed).fit_transform(points)
    if method == "pca":
        centred = points - points.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T
    raise ValueError(f"Unknown projection {method!r}; choose umap or pca.")


def _scatter(
    ax, xy: np.ndarray, labels: np.ndarray, classnames: Sequence[str], title: str, stars=None
) -> None:
    plt = require("matplotlib.pyplot", "Embedding maps")

    colours = plt.get_cmap("tab20" if len(classnames) > 10 else "tab10")
    for c, name in enumerate(classnames):
        mask = labels == c
        ax.scatter(xy[mask, 0], xy[mask, 1], s=8, color=colours(c % colours.N), label=name, alpha=0.7)
        if stars is not None:
            single, mean = stars
            ax.scatter(
                *single[c],
                marker="*",
                s=260,
                facecolors="none",
                edgecolors=colours(c % colours.N),
                linewidths=1.5,
            )
            ax.scatter(
                *mean[c], marker="*", s=260, color=colours(c % colours.N), edgecolors="black", linewidths=0.8
            )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def write_embedding_map(
    image_embeds: np.ndarray,
    labels: np.ndarray,
    classnames: Sequence[str],
    single_prompt: np.ndarray,
    template_mean: np.ndarray,
    out: str | Path,
    *,
    layer_features: Sequence[np.ndarray] = (),
    method: str = "umap",
    title: str = "",
) -> list[Path]:
    """Write ``out`` (PNG) and, with plotly installed, ``out`` as HTML; returns the files written."""
    matplotlib = require("matplotlib", "Embedding maps")

    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "Embedding maps")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n, k = len(image_embeds), len(classnames)
    joint = project_2d(np.concatenate([image_embeds, single_prompt, template_mean]), method)
    images_xy, single_xy, mean_xy = joint[:n], joint[n : n + k], joint[n + k :]
    panels = 1 + len(layer_features)
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 5 * rows), squeeze=False)
    _scatter(
        axes[0][0],
        images_xy,
        labels,
        classnames,
        title or f"image embeddings ({method})",
        (single_xy, mean_xy),
    )
    for i, features in enumerate(layer_features):
        ax = axes[(i + 1) // cols][(i + 1) % cols]
        _scatter(ax, project_2d(features, method), labels, classnames, f"vision layer {i} (CLS)")
    for j in range(panels, rows * cols):
        axes[j // cols][j % cols].axis("off")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(k, 10), fontsize=8, markerscale=2)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    written = [out]
    try:
        import plotly.graph_objects as go
    except ImportError:
        return written
    figure = go.Figure()
    for c, name in enumerate(classnames):
        mask = labels == c
        figure.add_trace(go.Scatter(x=images_xy[mask, 0], y=images_xy[mask, 1], mode="markers", name=name))
    figure.add_trace(
        go.Scatter(
            x=mean_xy[:, 0],
            y=mean_xy[:, 1],
            mode="markers+text",
            text=list(classnames),
            marker_symbol="star",
            marker_size=16,
            name="class text (template mean)",
        )
    )
    html = out.with_suffix(".html")
    figure.write_html(str(html))
    written.append(html)
    return written
