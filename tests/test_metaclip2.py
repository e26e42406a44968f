"""Meta CLIP 2 (transformers ``metaclip_2``): CLIP's towers under CLIP's weight names, except that the text
tower pools at its EOS token even though that token's id is 2 (its XLM-R-style tokenizer), where CLIP's legacy
rule would take the highest id. Parity with transformers' PyTorch model (float32, <= 1e-4)."""

import jax.numpy as jnp
import numpy as np
import torch
from conftest import TINY_VISION, save_torch_model

from clip_jax import CLIPModel
from clip_jax.models import load_text_tower, load_vision_tower

TOL = 1e-4
TEXT = dict(
    vocab_size=90,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    bos_token_id=0,
    pad_token_id=1,
    eos_token_id=2,
)


def test_metaclip2_loads_as_clip_towers_and_whole_model(tmp_path):
    import transformers as tf

    torch.manual_seed(0)
    model = tf.MetaClip2Model(
        tf.MetaClip2Config(vision_config=TINY_VISION, text_config=TEXT, projection_dim=16)
    )
    directory = save_torch_model(model.eval(), tmp_path / "metaclip2")
    rs = np.random.RandomState(0)
    ids = rs.randint(3, 90, (3, 12))
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    for row, length in enumerate((12, 7, 4)):  # EOS (id 2) ends each text, padding after it
        ids[row, length - 1] = 2
        ids[row, length:], mask[row, length:] = 1, 0
    pixels = rs.randn(2, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        ref_text = model.text_model(torch.tensor(ids), attention_mask=torch.tensor(mask))
        ref_vision = model.vision_model(torch.tensor(pixels))
        ref_text_features = model.get_text_features(torch.tensor(ids), attention_mask=torch.tensor(mask))
        ref_image_features = model.get_image_features(torch.tensor(pixels))
    text, vision = load_text_tower(directory), load_vision_tower(directory)
    assert type(text.config).__name__ == "MetaClip2TextConfig"
    out = text(jnp.asarray(ids), jnp.asarray(mask))
    nhwc = jnp.asarray(pixels.transpose(0, 2, 3, 1))
    assert np.abs(ref_text.pooler_output.numpy() - np.asarray(out.pooler_output)).max() <= TOL
    assert np.abs(ref_text.last_hidden_state.numpy() - np.asarray(out.last_hidden_state)).max() <= TOL
    assert np.abs(ref_vision.pooler_output.numpy() - np.asarray(vision(nhwc).pooler_output)).max() <= TOL
    # CLIP's legacy rule (highest id) would pool elsewhere: the EOS rule is what makes these equal.
    legacy = ref_text.last_hidden_state.numpy()[np.arange(3), ids.argmax(axis=1)]
    assert np.abs(legacy - ref_text.pooler_output.numpy()).max() > 1e-2

    whole = CLIPModel.from_pretrained(directory)
    image_features = whole.module.image_features(nhwc)
    text_features = whole.module.text_features(jnp.asarray(ids), jnp.asarray(mask))
    for ref, ours in ((ref_image_features, image_features), (ref_text_features, text_features)):
        ref = getattr(ref, "pooler_output", ref)
        assert np.abs(ref.numpy() - np.asarray(ours)).max() <= TOL
    assert abs(whole.log_logit_multiplier - float(model.logit_scale.detach())) <= 1e-6
