"""Checkpoint formats, key tables and the errors a user sees when a checkpoint does not fit."""

import copy
import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_BERT, save_torch_model
from flax import serialization

from clip_jax.models import bert, load_text_tower, load_vision_tower, vit
from clip_jax.weights import CheckpointError, read_state_dict
from clip_jax.weights.keymap import CONV, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR


def _torch_to_flax_tree(state_dict):
    """transformers 4.x's PyTorch->Flax naming, written out independently for the test:
    Linear weight -> transposed 'kernel', Conv2d weight OIHW -> HWIO 'kernel', LayerNorm weight -> 'scale',
    Embedding weight -> 'embedding'; dots become nested dicts."""
    tree = {}
    for name, tensor in state_dict.items():
        *parents, leaf = name.split(".")
        array = tensor.numpy()
        if leaf == "weight":
            if "LayerNorm" in parents[-1] or "layer_norm" in parents[-1] or "layrnorm" in parents[-1]:
                leaf = "scale"
            elif "embedding" in parents[-1]:
                leaf = "embedding"
            elif array.ndim == 4:
                leaf, array = "kernel", array.transpose(2, 3, 1, 0)
            else:
                leaf, array = "kernel", array.T
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = array
    return tree


def test_legacy_flax_msgpack_loads(checkpoints, tmp_path):
    for name in ("bert", "vision"):
        model = checkpoints["models"][name]
        directory = tmp_path / name
        model.config.save_pretrained(directory)
        state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        (directory / "flax_model.msgpack").write_bytes(
            serialization.msgpack_serialize(_torch_to_flax_tree(state))
        )
        reference = {k: v.numpy() for k, v in state.items()}
        loaded = read_state_dict(directory)
        assert set(loaded) == set(reference)
        for key in reference:
            np.testing.assert_array_equal(loaded[key], reference[key])
    tower = load_vision_tower(tmp_path / "vision")
    x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        ref = checkpoints["models"]["vision"](torch.tensor(x)).pooler_output.numpy()
    assert np.abs(ref - np.asarray(tower(jnp.asarray(x.transpose(0, 2, 3, 1))).pooler_output)).max() <= 1e-4


def test_bfloat16_safetensors_are_read(checkpoints, tmp_path):
    model = checkpoints["models"]["bert"]
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(
        tmp_path
    )  # a copy: the session's model stays float32
    loaded = read_state_dict(tmp_path)
    ref = model.state_dict()["embeddings.word_embeddings.weight"].to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(loaded["embeddings.word_embeddings.weight"].astype(np.float32), ref)


@pytest.mark.parametrize(
    "transform,torch_shape,ours_shape",
    [
        (LINEAR, (6, 4), (4, 6)),
        (HEADS_IN, (8, 4), (4, 2, 4)),
        (HEADS_BIAS, (8,), (2, 4)),
        (HEADS_OUT, (4, 8), (2, 4, 4)),
        (CONV, (5, 3, 2, 2), (2, 2, 3, 5)),
    ],
)
def test_transforms_round_trip(transform, torch_shape, ours_shape):
    array = np.random.RandomState(0).randn(*torch_shape)
    ours = transform.forward(array, ours_shape)
    assert ours.shape == ours_shape
    np.testing.assert_array_equal(transform.inverse(ours), array)


def test_heads_in_layout_matches_pytorch_linear():
    """Our [embed, heads, head_dim] query kernel computes what nn.Linear computes, head by head."""
    linear = torch.nn.Linear(4, 8)
    kernel = HEADS_IN.forward(linear.weight.detach().numpy(), (4, 2, 4))
    bias = HEADS_BIAS.forward(linear.bias.detach().numpy(), (2, 4))
    x = np.random.RandomState(0).randn(3, 4).astype(np.float32)
    ours = np.einsum("nd,dhk->nhk", x, kernel) + bias
    np.testing.assert_allclose(ours.reshape(3, 8), linear(torch.tensor(x)).detach().numpy(), atol=1e-6)


def test_every_parameter_has_a_rule_both_ways(checkpoints):
    """Each key of real transformers checkpoints maps to a parameter and back to the same key."""
    for name, key_map, prefix_drop in (("bert", bert.KEY_MAP, ""), ("vision", vit.KEY_MAP, "")):
        for key in checkpoints["models"][name].state_dict():
            if key.endswith(("position_ids", "token_type_ids")):
                continue
            hit = key_map.to_ours(key[len(prefix_drop) :])
            assert hit is not None, key
            assert key_map.to_torch(hit[0])[0] == key


def test_wrong_shape_names_key_shapes_and_cause(checkpoints, tmp_path):
    directory = save_torch_model(checkpoints["models"]["bert"], tmp_path / "bert")
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 40
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        load_text_tower(directory)
    message = str(error.value)
    assert (
        "encoder.layer.0.intermediate.dense.weight: (32, 48) does not fit layers.0.mlp.fc1.kernel (32, 40)"
        in message
    )
    assert "config.json does not describe these weights" in message


def test_missing_directory_and_missing_weights(tmp_path):
    with pytest.raises(CheckpointError, match="No such checkpoint directory"):
        load_text_tower(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="holds no weights: expected one of model.safetensors"):
        load_text_tower(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_text_tower(tmp_path)


def test_hub_id_offline_without_cache_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        load_text_tower("dbmdz/bert-base-italian-xxl-cased")


def test_unreachable_hub_says_so(tmp_path):
    """Online but the hub cannot be reached (a closed port on localhost stands for a network that is down):
    one CheckpointError saying to check the network, not a raw connection error."""
    import os
    import subprocess
    import sys

    env = dict(
        os.environ,
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HOME=str(tmp_path),
        HF_HUB_ETAG_TIMEOUT="2",
        HF_HUB_DOWNLOAD_TIMEOUT="2",
    )
    code = (
        "from clip_jax.weights.readers import CheckpointError, resolve_checkpoint\n"
        "try:\n    resolve_checkpoint('someone/some-model')\nexcept CheckpointError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240
    )
    assert "Could not get someone/some-model" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "the hub could not be reached" in result.stdout and "check the network" in result.stdout


def test_unknown_model_type_lists_supported(checkpoints, tmp_path):
    directory = save_torch_model(checkpoints["models"]["bert"], tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "gpt2"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"Unknown text model_type 'gpt2'.*'bert'.*'roberta'"):
        load_text_tower(directory)
    with pytest.raises(CheckpointError, match="is a text tower, not a vision tower"):
        load_vision_tower(checkpoints["paths"]["bert"])


def test_missing_and_unexpected_keys_are_named(checkpoints, tmp_path):
    from safetensors.numpy import save_file

    model = checkpoints["models"]["bert"]
    directory = tmp_path / "m"
    model.config.save_pretrained(directory)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    del state["encoder.layer.1.output.LayerNorm.bias"]
    state["encoder.layer.0.attention.self.rotary.weight"] = np.zeros(3, np.float32)
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_text_tower(directory)
    assert "missing from the checkpoint: encoder.layer.1.output.LayerNorm.bias" in str(error.value)
    assert "unexpected keys (not used by the model): encoder.layer.0.attention.self.rotary.weight" in str(
        error.value
    )
    with pytest.raises(CheckpointError, match="missing from the checkpoint"):
        load_text_tower(directory, ignore=(r".*rotary.*",))
    tower = load_text_tower(directory, ignore=(r".*rotary.*",), allow_missing=(r"layers\.1\.mlp_norm\.bias",))
    assert tower.layers[1].mlp_norm.bias.get_value().shape == (TINY_BERT["hidden_size"],)


def test_corrupt_safetensors_is_reported(checkpoints, tmp_path):
    directory = save_torch_model(checkpoints["models"]["bert"], tmp_path / "m")
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_text_tower(directory)


def test_bin_without_torch_says_how_to_fix(checkpoints, tmp_path, monkeypatch):
    directory = save_torch_model(checkpoints["models"]["bert"], tmp_path / "m", "bin")
    config = json.loads((directory / "config.json").read_text())
    config.pop("dtype", None)  # transformers' config class imports torch for a dtype string
    (directory / "config.json").write_text(json.dumps(config))
    monkeypatch.setitem(sys.modules, "torch", None)  # make `import torch` fail as if it were not installed
    with pytest.raises(CheckpointError, match="needs torch .*weights_only=True.*safetensors"):
        load_text_tower(directory)


class Payload:
    """Stands for code an attacker put in a pickle: unpickling it would call ``os.getcwd``."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_bin_with_pickled_objects_is_refused(tmp_path):
    """weights_only=True: a .bin that needs arbitrary unpickling is refused, never executed."""
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_BERT, model_type="bert")))
    torch.save({"x": Payload(), "y": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_text_tower(tmp_path)
    torch.save({"x": [1, 2], "y": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="'x' is a list, not a tensor"):
        load_text_tower(tmp_path)


def test_readers_never_leak_an_internal_error(checkpoints, tmp_path):
    """An unsupported dtype, zero attention heads and a msgpack whose root is a list are CheckpointErrors naming
    the file and the problem (they were AttributeError, ZeroDivisionError and an unpacking ValueError)."""
    import struct

    directory = save_torch_model(checkpoints["models"]["bert"], tmp_path / "f8")
    header = json.dumps({"w": {"dtype": "F8_E5M2", "shape": [4], "data_offsets": [0, 4]}}).encode()
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    with pytest.raises(CheckpointError, match=r"f8/model.safetensors: tensor 'w' has dtype 'F8_E5M2'"):
        load_text_tower(directory)

    directory = save_torch_model(checkpoints["models"]["bert"], tmp_path / "heads")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, num_attention_heads=0)))
    with pytest.raises(CheckpointError, match=r"heads.*num_attention_heads"):
        load_text_tower(directory)

    directory = tmp_path / "msgpack"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize([1, 2, 3]))
    with pytest.raises(
        CheckpointError, match=r"flax_model.msgpack is not a Flax checkpoint: its root is a list"
    ):
        load_text_tower(directory)
