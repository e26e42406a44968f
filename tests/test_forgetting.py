"""Tools against forgetting (issue 24): per-group weight decay, L2-SP, layer-wise learning-rate decay."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_helpers import tiny_config

from clip_jax.config import validate
from clip_jax.sharding import path_string
from clip_jax.train.optim import make_optimizer

GROUPS = [("head", r"head\..*"), ("tower", r"tower\..*")]
SETTINGS = dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.5, grad_clip_norm=0.0, agc_clip=0.0)


def _params(seed=0):
    r = np.random.default_rng(seed)
    return {
        "head": {"kernel": jnp.asarray(r.normal(size=(3, 4)), jnp.float32)},
        "tower": {
            "kernel": jnp.asarray(r.normal(size=(4, 5)), jnp.float32),
            "bias": jnp.asarray(r.normal(size=(5,)), jnp.float32),
        },
    }


def _optimizer(params, lr=0.1, **kwargs):
    tx, _ = make_optimizer(
        params,
        groups=GROUPS,
        learning_rates={"head": lr, "tower": lr},
        steps=10,
        warmup_steps=0,
        decay="constant",
        end_factor=0.0,
        optimizer="adamw",
        settings=SETTINGS,
        **kwargs,
    )
    return tx


def _adam_first_step(g, b1=0.9, b2=0.98, eps=1e-6):
    m, v = (1 - b1) * g, (1 - b2) * g**2
    return (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)


def test_weight_decay_per_group():
    """Zero gradients: the only update is the decay, -lr * wd * w, on the matrices of groups that have it."""
    params = _params()
    tx = _optimizer(params, weight_decays={"tower": 0.0})
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1 * 0.5 * params["head"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(updates["tower"]["kernel"], 0.0)
    np.testing.assert_array_equal(updates["tower"]["bias"], 0.0)


def test_l2_sp_one_update_matches_numpy():
    """L2-SP: AdamW whose decay pulls towards the weights the optimizer started on, not towards zero."""
    start, now, grads = _params(0), _params(1), _params(2)
    lr, wd = 0.1, 0.5
    for towards, anchor in (("start", start), ("zero", jax.tree.map(jnp.zeros_like, start))):
        tx = _optimizer(start, lr=lr, decay_towards=towards)
        updates, _ = tx.update(grads, tx.init(start), now)
        for group, name in (("head", "kernel"), ("tower", "kernel"), ("tower", "bias")):
            g = np.asarray(grads[group][name], np.float64)
            decay = (
                wd * (np.asarray(now[group][name]) - np.asarray(anchor[group][name]))
                if name == "kernel"
                else 0
            )
            expected = -lr * (_adam_first_step(g) + decay)
            np.testing.assert_allclose(updates[group][name], expected, rtol=1e-5, atol=1e-6, err_msg=towards)


def test_l2_sp_start_weights_do_not_move():
    """The start kept in the optimizer state stays the phase's start after several steps."""
    start = _params(0)
    tx = _optimizer(start, decay_towards="start")
    state, params = tx.init(start), start
    for seed in (3, 4, 5):
        updates, state = tx.update(_params(seed), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    kept = jax.tree.leaves(state)
    assert any(np.array_equal(k, start["head"]["kernel"]) for k in kept)
    assert not np.allclose(params["head"]["kernel"], start["head"]["kernel"])


def test_layer_decay_rates_applied(tmp_path):
    """One AdamW step from a phase's optimizer (config wiring included) on the tiny model: every parameter moves
    by its group's rate times layer_decay ** (depth + 1 - layer) (Adam's first step is lr * sign(gradient))."""
    from clip_jax.train.model import build_model
    from clip_jax.train.phase import phase_optimizer, phases_of

    decay = 0.5
    config = validate(
        tiny_config(
            tmp_path,
            **{
                "train.layer_decay": decay,
                "train.weight_decay": 0.0,
                "train.grad_clip_norm": 0.0,
                "phases.finetune.warmup_steps": 0,
                "phases.finetune.decay": "constant",
                "phases.finetune.learning_rates": {"head": 1e-3, "vision": 1e-2, "text": 1e-1},
            },
        )
    )
    finetune = phases_of(config)[1]
    params = nnx.state(build_model(config).module, nnx.Param)
    tx, _ = phase_optimizer(config, finetune, params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    depth = {t: len(getattr(build_model(config).module, t).layers) for t in ("vision", "text")}
    rates = {"vision": 1e-2, "text": 1e-1}
    seen = set()
    for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
        name = path_string(path)
        tower = name.split(".")[0]
        if tower not in rates:
            expected = 1e-3
        else:
            parts = name.split(".")
            if "layers" in parts:
                layer = int(parts[parts.index("layers") + 1]) + 1
            elif "embed" in name or "pre_layernorm" in name:
                layer = 0
            else:
                layer = depth[tower] + 1
            expected = rates[tower] * decay ** (depth[tower] + 1 - layer)
            seen.add((tower, layer))
        np.testing.assert_allclose(np.abs(np.asarray(update)), expected, rtol=1e-4, err_msg=name)
    for tower in rates:  # embeddings, every layer and the top were all checked
        assert {layer for t, layer in seen if t == tower} == set(range(depth[tower] + 2)), tower


def test_weight_decay_of_unknown_group_is_refused(tmp_path):
    config = tiny_config(tmp_path, **{"phases.finetune.weight_decay": {"vison": 0.0}})
    with pytest.raises(
        ValueError, match="phases.finetune.weight_decay.vison: 'vison' is not a parameter group"
    ):
        validate(config)


# --- WiSE-FT export -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_phase_run(tmp_path_factory):
    """A tiny two-phase run: phase 1 (3 steps) trains the heads only, so its last checkpoint (step 3) holds the
    towers exactly as the run started with them; phase 2 (3 steps) trains everything."""
    from clip_jax.train import Trainer

    root = tmp_path_factory.mktemp("wise")
    config = tiny_config(
        root / "cache", **{"phases.finetune.learning_rates": {"head": 1e-2, "vision": 1e-2, "text": 1e-2}}
    )
    Trainer(config, str(root / "run")).run()
    return root


def _tower_params(model, tower):
    state = nnx.state(getattr(model.module, tower), nnx.Param)
    return {path_string(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def _export(root, out, *extra):
    from clip_jax import CLIPModel
    from clip_jax.export import main as export_main

    return CLIPModel.from_pretrained(
        export_main(["--checkpoint", str(root / "run"), "--out", str(out), *extra])
    )


def test_wise_ft_export_interpolates_towers_between_start_and_fine_tuned(two_phase_run, tmp_path):
    from clip_jax import CLIPModel, load_model

    root = two_phase_run
    start, tuned = load_model(str(root / "run"), step=3), load_model(str(root / "run"))
    images = np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    captions = ["un cerchio rosso", "due quadrati blu", "tre triangoli verdi"]
    exported = {
        alpha: _export(root, tmp_path / str(alpha), "--interpolate", str(alpha)) for alpha in (0.0, 0.5, 1.0)
    }
    for tower in ("vision", "text"):
        s, t = _tower_params(start, tower), _tower_params(tuned, tower)
        assert any(not np.array_equal(s[k], t[k]) for k in s), "phase 2 should have changed the tower"
        for alpha, model in exported.items():
            got = _tower_params(model, tower)
            for k in s:
                np.testing.assert_allclose(
                    got[k], (1 - alpha) * s[k] + alpha * t[k], rtol=1e-6, atol=1e-7, err_msg=k
                )
    # embeddings: alpha=1 is the fine-tuned model; alpha=0 its heads on the towers the run started with
    for alpha, reference in ((1.0, tuned), (0.0, None)):
        if reference is None:
            module = nnx.clone(tuned.module)
            module.vision, module.text = nnx.clone(start.module.vision), nnx.clone(start.module.text)
            reference = CLIPModel(
                module,
                tokenizer=tuned.tokenizer,
                image_processor=tuned.image_processor,
                max_length=tuned.max_length,
            )
        np.testing.assert_allclose(
            exported[alpha].encode_image(images), reference.encode_image(images), atol=1e-5
        )
        np.testing.assert_allclose(
            exported[alpha].encode_text(captions), reference.encode_text(captions), atol=1e-5
        )
    # heads are the fine-tuned ones at every alpha
    np.testing.assert_array_equal(
        np.asarray(exported[0.5].module.visual_projection.kernel[...]),
        np.asarray(tuned.module.visual_projection.kernel[...]),
    )


def test_wise_ft_refuses_bad_input_and_leaves_out_untouched(two_phase_run, tmp_path):
    from clip_jax.export import main as export_main

    root = two_phase_run
    with pytest.raises(ValueError, match=r"--interpolate 1.5 is outside \[0, 1\]"):
        export_main(["--checkpoint", str(root / "run"), "--out", str(tmp_path / "a"), "--interpolate", "1.5"])
    exported = _export(root, tmp_path / "plain")  # an export (not a workdir) records no start
    del exported
    with pytest.raises(ValueError, match="pass --start MODEL"):
        export_main(
            ["--checkpoint", str(tmp_path / "plain"), "--out", str(tmp_path / "b"), "--interpolate", "0.5"]
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- forgetting: eval --reference ------------------------------------------------------------------------


def _perturbed(model, path, parts, seed):
    """``model`` saved at ``path`` with the parameters under ``parts`` changed by noise."""
    from clip_jax import CLIPModel

    module = nnx.clone(model.module)
    r = np.random.default_rng(seed)
    for part in parts:
        sub = getattr(module, part)
        state = nnx.state(sub, nnx.Param)
        nnx.update(sub, jax.tree.map(lambda x: x + 0.5 * r.normal(size=x.shape).astype(x.dtype), state))
    copy = CLIPModel(
        module, tokenizer=model.tokenizer, image_processor=model.image_processor, max_length=model.max_length
    )
    return str(copy.save_pretrained(path))


def test_eval_reference_puts_the_new_vision_tower_into_the_original(checkpoints, tmp_path, capsys):
    from PIL import Image

    import eval as eval_cli
    from clip_jax import CLIPModel, load_model
    from clip_jax.evaluate.forgetting import reference_models

    original = CLIPModel.from_towers(
        vision=checkpoints["paths"]["vision"], text=checkpoints["paths"]["bert"], projection_dim=16
    )
    original_path = str(original.save_pretrained(tmp_path / "original"))
    new_vision = _perturbed(original, tmp_path / "new_vision", ["vision"], 0)  # only the vision tower differs
    new_rest = _perturbed(
        original, tmp_path / "new_rest", ["text", "text_projection", "visual_projection"], 1
    )
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    captions = ["rosso", "un quadrato blu"]
    pairs = list(reference_models([new_vision, new_rest], original_path))
    assert [name for name, _ in pairs] == [
        original_path,
        f"{new_vision} (vision) in {original_path}",
        f"{new_rest} (vision) in {original_path}",
    ]
    plain = {p: load_model(p) for p in (original_path, new_vision, new_rest)}
    # new_vision's tower in the original is new_vision itself (all else is the original's) ...
    np.testing.assert_allclose(
        pairs[1][1].encode_image(images), plain[new_vision].encode_image(images), atol=1e-6
    )
    assert not np.allclose(
        plain[new_vision].encode_image(images), plain[original_path].encode_image(images), atol=1e-3
    )
    # ... and new_rest's (the original's own vision tower) gives back the original, not new_rest
    for _, model in pairs[1:]:
        np.testing.assert_allclose(
            model.encode_text(captions), plain[original_path].encode_text(captions), atol=1e-6
        )
    np.testing.assert_allclose(
        pairs[2][1].encode_image(images), plain[original_path].encode_image(images), atol=1e-6
    )
    assert not np.allclose(
        plain[new_rest].encode_text(captions), plain[original_path].encode_text(captions), atol=1e-3
    )

    colours = {"rosso": (220, 30, 30), "verde": (30, 170, 40), "blu": (30, 60, 220)}
    for name, rgb in colours.items():
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40 + i, 36), tuple(c - 20 * i for c in rgb)).save(
                tmp_path / "folder" / name / f"{i}.png"
            )
    (tmp_path / "classes.json").write_text(
        json.dumps({"classnames": list(colours), "templates": ["una foto {}."]})
    )
    common = [
        "--task", "zeroshot", "--dataset", f"imagefolder:{tmp_path / 'folder'}",
        "--classnames", str(tmp_path / "classes.json"), "--templates", str(tmp_path / "classes.json"),
        "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    results = eval_cli.main(["--model", new_vision, "--reference", original_path, *common])
    alone = eval_cli.main(["--model", new_vision, *common])
    assert [r["pretrained"] for r in results] == [original_path, f"{new_vision} (vision) in {original_path}"]
    assert results[1]["metrics"] == alone[0]["metrics"]
    out = capsys.readouterr().out
    own, with_new = results[0]["metrics"]["acc1"], results[1]["metrics"]["acc1"]
    assert (
        f"forgetting (acc1): {original_path} {own:.4f} → {new_vision} (vision) in {original_path} {with_new:.4f}"
        in out
    )


def test_eval_reference_is_for_zeroshot_only(tmp_path, capsys):
    import eval as eval_cli

    with pytest.raises(SystemExit):
        eval_cli.main(["--model", "m", "--reference", "o", "--task", "retrieval", "--data", "jsonl:x"])
    assert "--reference (forgetting) is for --task zeroshot" in capsys.readouterr().err


def test_resume_rules_for_the_new_optimizer_keys(tmp_path):
    """A workdir recorded before these keys existed resumes unchanged; switching the optimizer stages is refused."""
    from clip_jax.train.resume import ALLOWED, BREAKING, config_changes

    config = validate(tiny_config(tmp_path))
    old = config.to_dict()
    for name in old["phases"]:
        del old["phases"][name]["weight_decay"]
    del old["train"]["layer_decay"], old["train"]["weight_decay_towards"]
    assert config_changes(old, config) == []
    kinds = lambda **changes: {
        k: kind for k, _, _, kind, _ in config_changes(config.to_dict(), tiny_config(tmp_path, **changes))
    }
    assert kinds(**{"train.layer_decay": 0.65}) == {"train.layer_decay": BREAKING}
    assert kinds(**{"train.weight_decay_towards": "start"}) == {"train.weight_decay_towards": BREAKING}
    assert kinds(**{"phases.finetune.weight_decay": {"vision": 0.0}}) == {
        "phases.finetune.weight_decay.vision": BREAKING
    }
    assert kinds(**{"phases.finetune.weight_decay": {"vision": 0.1}}) == {
        "phases.finetune.weight_decay.vision": ALLOWED
    }


# --- the same eval tasks during training (train.evals) ----------------------------------------------------


def _colour_folder(root):
    """A labelled image folder of three colours and its class names / templates file."""
    from PIL import Image

    colours = {"rosso": (220, 30, 30), "verde": (30, 170, 40), "blu": (30, 60, 220)}
    for name, rgb in colours.items():
        (root / "folder" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40 + i, 36), tuple(c - 20 * i for c in rgb)).save(
                root / "folder" / name / f"{i}.png"
            )
    (root / "classes.json").write_text(
        json.dumps({"classnames": list(colours), "templates": ["una foto {}."]})
    )
    return {
        "dataset": f"imagefolder:{root / 'folder'}",
        "classnames": str(root / "classes.json"),
        "templates": str(root / "classes.json"),
    }


def test_training_runs_eval_tasks_as_clip_jax_eval_does(tmp_path, capsys):
    """``train.evals`` runs registered eval tasks at each validation: the last values logged are what
    ``clip-jax eval`` reports for the final checkpoint, also for forgetting (``reference``); after phase 1
    (heads only) the vision tower is the reference's own, so forgetting reads the reference's score."""
    import eval as eval_cli
    from clip_jax.train import Trainer, build_model

    labelled = _colour_folder(tmp_path)
    config = tiny_config(
        tmp_path / "cache",
        **{"phases.finetune.learning_rates": {"head": 1e-2, "vision": 3e-2, "text": 1e-2}},
    )
    reference = str(build_model(config).save_pretrained(tmp_path / "reference"))  # the run's starting weights
    config.train.evals = {
        "colours": dict(task="zeroshot", **labelled),
        "forgetting": dict(task="zeroshot", reference=reference, **labelled),
    }
    Trainer(config, str(tmp_path / "run")).run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in records if "val/colours/acc1" in r}
    assert sorted(logged) == [3, 6]  # the end of each phase (eval_every=500)
    assert {"val/loss", "val/forgetting/acc1", "val/forgetting/original/acc1"} <= set(logged[6])

    flags = [f"--{k}={v}" for k, v in labelled.items()]
    standalone = eval_cli.main(["--model", str(tmp_path / "run"), "--task", "zeroshot", *flags])[0]["metrics"]
    forgetting = eval_cli.main(
        ["--model", str(tmp_path / "run"), "--reference", reference, "--task", "zeroshot", *flags]
    )
    capsys.readouterr()
    for metric in ("acc1", "mean_per_class_recall"):
        assert logged[6][f"val/colours/{metric}"] == pytest.approx(standalone[metric], abs=1e-6)
        assert logged[6][f"val/forgetting/original/{metric}"] == pytest.approx(
            forgetting[0]["metrics"][metric], abs=1e-6
        )
        assert logged[6][f"val/forgetting/{metric}"] == pytest.approx(
            forgetting[1]["metrics"][metric], abs=1e-6
        )
        assert logged[3][f"val/forgetting/{metric}"] == logged[3][f"val/forgetting/original/{metric}"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (dict(task="zeroshott"), "train.evals.bad.task='zeroshott' is not an eval task — use one of"),
        (
            dict(task="zeroshot", dataset="imagefolder:x", classnames="c", templates="t", data="x"),
            "train.evals.bad.data: task 'zeroshot' has no option 'data' — its options are",
        ),
        (
            dict(task="retrieval"),
            "train.evals.bad: task 'retrieval' needs data — set train.evals.bad.data=...",
        ),
        (
            dict(task="zeroshot", dataset="d", classnames="c", templates="t", max_bad_fraction=2.0),
            "train.evals.bad: max_bad_fraction must be between 0 and 1",
        ),
    ],
)
def test_a_bad_eval_entry_is_refused_before_anything_is_written(tmp_path, entry, message):
    from clip_jax.train import Trainer

    config = tiny_config(tmp_path / "cache")
    config.train.evals = {"bad": entry}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()
