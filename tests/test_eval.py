"""eval.py: retrieval and zero-shot metrics against brute-force NumPy, resources, embedding maps, TFDS, errors."""

import collections
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_jax import CLIPModel
from clip_jax.evaluate.retrieval import retrieval_metrics
from clip_jax.evaluate.zeroshot import ClassEmbeddingCache, classification_metrics
from clip_jax.prompts import PLACEHOLDER, builtin, class_embeddings, load_resource


def brute_force_ranks(scores, correct):
    """1-based position of the first correct candidate when candidates are sorted by descending score,
    incorrect ones placed first among equal scores (pessimistic ties)."""
    ranks = []
    for row, good in zip(scores, correct):
        order = sorted(range(len(row)), key=lambda j: (-row[j], bool(good[j])))
        ranks.append(next(pos for pos, j in enumerate(order, 1) if good[j]))
    return np.array(ranks)


def test_retrieval_metrics_against_brute_force():
    rs = np.random.RandomState(0)
    images = rs.randn(7, 4)
    text_image = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 6])  # several captions per image
    texts = rs.randn(len(text_image), 4)
    texts[3] = texts[4]  # a tie between two captions
    images[5] = images[6]  # and between two images
    scores = images @ texts.T
    correct = text_image[None, :] == np.arange(7)[:, None]
    got = retrieval_metrics(images, texts, text_image, ks=(1, 5, 10))
    for direction, (s, c) in {"i2t": (scores, correct), "t2i": (scores.T, correct.T)}.items():
        ranks = brute_force_ranks(s, c)
        for k in (1, 5, 10):
            assert got[f"{direction}_R@{k}"] == pytest.approx(np.mean(ranks <= k))
            assert got[f"{direction}_MRR@{k}"] == pytest.approx(
                np.mean([1 / r if r <= k else 0 for r in ranks])
            )
    with pytest.raises(ValueError, match="text->image indices"):
        retrieval_metrics(images, texts, text_image[:-1])


def test_classification_metrics_against_brute_force():
    rs = np.random.RandomState(1)
    logits, labels = rs.randn(50, 8), rs.randint(0, 7, 50)  # class 7 never occurs
    got = classification_metrics(logits, labels, 8)
    top1 = np.array([np.argmax(row) == y for row, y in zip(logits, labels)])
    top5 = np.array([y in np.argsort(-row)[:5] for row, y in zip(logits, labels)])
    recall = np.mean([top1[labels == c].mean() for c in range(7)])
    assert got == pytest.approx({"acc1": top1.mean(), "acc5": top5.mean(), "mean_per_class_recall": recall})


def test_top5_is_absent_with_five_classes_or_fewer():
    """With <= 5 classes every label is in the top 5: acc5 would read 1.0 for any model, so it is not reported."""
    rs = np.random.RandomState(2)
    for classes in (3, 5):
        got = classification_metrics(rs.randn(20, classes), rs.randint(0, classes, 20), classes)
        assert set(got) == {"acc1", "mean_per_class_recall"}
    assert "acc5" in classification_metrics(rs.randn(20, 6), rs.randint(0, 6, 20), 6)


def test_resources(tmp_path):
    assert load_resource("it:cifar10", "classnames")[3] == "gatto"
    assert len(load_resource("en:cifar100", "classnames")) == 100
    assert all("{}" in t for t in load_resource("it:cifar100", "templates"))
    (tmp_path / "mine.json").write_text(json.dumps({"classnames": ["a", "b"], "templates": ["foto di {c}"]}))
    assert load_resource(str(tmp_path / "mine.json"), "templates") == ["foto di {c}"]
    (tmp_path / "bad.txt").write_text("una foto\n")
    with pytest.raises(ValueError, match="without a"):
        load_resource(str(tmp_path / "bad.txt"), "templates")
    with pytest.raises(ValueError, match="No built-in classnames 'fr:cifar10'"):
        load_resource("fr:cifar10", "classnames")


def resource_file(spec):
    lang, _, name = spec.partition(":")
    return json.loads((resources.files("clip_jax") / "resources" / f"{name}_{lang}.json").read_text())


def duplicates(values):
    counts = collections.Counter(values)
    return {v: [i for i, x in enumerate(values) if x == v] for v in sorted(counts) if counts[v] > 1}


def test_every_builtin_resource():
    specs = builtin()
    assert {"en:cifar10", "it:cifar10", "en:cifar100", "it:cifar100", "en:imagenet", "it:imagenet"} <= set(
        specs
    )
    for spec in specs:
        data = resource_file(spec)
        names, templates = load_resource(spec, "classnames"), load_resource(spec, "templates")
        assert data["provenance"] and names == data["classnames"] and templates == data["templates"]
        assert all(isinstance(n, str) and n and n == n.strip() for n in names)
        assert all(len(PLACEHOLDER.findall(t)) == 1 for t in templates), spec
        lang, _, name = spec.partition(":")
        assert len(names) == len(load_resource(f"{'it' if lang == 'en' else 'en'}:{name}", "classnames"))
        recorded = data["provenance"].get("duplicates", {}) if isinstance(data["provenance"], dict) else {}
        assert duplicates(names) == recorded.get("classnames", {}), spec  # only the sources' own duplicates
        assert duplicates(templates) == recorded.get("templates", {}), spec


def test_imagenet_resources():
    en, it = load_resource("en:imagenet", "classnames"), load_resource("it:imagenet", "classnames")
    assert len(en) == len(it) == 1000
    en_templates, it_templates = (
        load_resource("en:imagenet", "templates"),
        load_resource("it:imagenet", "templates"),
    )
    assert len(en_templates) == len(set(en_templates)) == 80  # OpenAI's 80 ImageNet templates
    assert en_templates[0] == "a bad photo of a {}." and en_templates[-1] == "a tattoo of the {}."
    assert len(it_templates) == 49 and it_templates[0] == "una brutta foto di {}"
    # The standard ImageNet-1k class order in both languages (well-known indices).
    for index, english, italian in [
        (0, "tench", "una tinca"),
        (1, "goldfish", "un pesce rosso"),
        (207, "Golden Retriever", "un golden retriever"),
        (281, "tabby cat", "un soriano"),
        (340, "zebra", "una zebra"),
        (388, "giant panda", "un panda gigante"),
        (954, "banana", "una banana"),
        (999, "toilet paper", "una carta igienica"),
    ]:
        assert (en[index], it[index]) == (english, italian)
    for spec in ("en:imagenet", "it:imagenet"):
        provenance = resource_file(spec)["provenance"]
        assert (provenance["package"], provenance["version"]) == ("clip-benchmark", "1.6.2")
        assert "Copyright (c) 2022, Mehdi Cherti" in provenance["license_notice"][0]
    assert "Copyright (c) 2021 OpenAI" in resource_file("en:imagenet")["provenance"]["license_notice"][1]


@pytest.fixture(scope="module")
def saved_model(checkpoints, tmp_path_factory):
    model = CLIPModel.from_towers(
        vision=checkpoints["paths"]["vision"], text=checkpoints["paths"]["bert"], projection_dim=16
    )
    return model, str(model.save_pretrained(tmp_path_factory.mktemp("model") / "m"))


def test_class_embeddings_are_renormalised_template_means(saved_model):
    model, _ = saved_model
    names, templates = ["gatto", "cane"], ["una foto di {}.", "il {} blu"]
    manual = []
    for name in names:
        e = model.encode_text([t.replace("{}", name) for t in templates]).mean(axis=0)
        manual.append(e / np.linalg.norm(e))
    np.testing.assert_allclose(class_embeddings(model, names, templates), np.stack(manual), atol=1e-6)


def test_class_embedding_cache_computes_once(saved_model, tmp_path):
    model, _ = saved_model
    calls = []
    original = model.encode_text
    model.encode_text = lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw)
    try:
        cache = ClassEmbeddingCache(tmp_path)
        first = cache.get(model, "m", ["gatto"], ["una foto di {}."])
        again = ClassEmbeddingCache(tmp_path).get(model, "m", ["gatto"], ["una foto di {}."])
    finally:
        model.encode_text = original
    assert calls == [1] and np.array_equal(first, again)


def test_class_embedding_cache_is_never_stale(saved_model, tmp_path):
    """A model changed at the same path (retrained workdir, overwritten export) gets fresh class embeddings."""
    import jax.numpy as jnp

    model, _ = saved_model
    path = tmp_path / "export"
    model.save_pretrained(path)
    names, templates = ["gatto", "cane", "rosso"], ["una foto di {}."]
    cache_dir = tmp_path / "cache"
    before = ClassEmbeddingCache(cache_dir).get(CLIPModel.from_pretrained(path), str(path), names, templates)
    changed = CLIPModel.from_pretrained(path)
    kernel = changed.module.text_projection.kernel
    kernel.set_value(
        kernel[...]
        + 0.05
        * jnp.arange(kernel[...].size, dtype=kernel[...].dtype).reshape(kernel[...].shape)
        / kernel[...].size
    )
    changed.save_pretrained(path)  # overwritten in place
    reloaded = CLIPModel.from_pretrained(path)
    after = ClassEmbeddingCache(cache_dir).get(reloaded, str(path), names, templates)
    np.testing.assert_allclose(after, class_embeddings(reloaded, names, templates), atol=1e-6)
    assert np.abs(after - before).max() > 1e-3
    assert len(list(cache_dir.glob("classes-*.npy"))) == 2


def image_folder(root, classes=("rosso", "verde", "blu"), per_class=4):
    colours = {"rosso": (220, 30, 30), "verde": (30, 170, 40), "blu": (30, 60, 220)}
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40 + i, 36), colours[name]).save(root / name / f"{i}.png")
    return root


def test_eval_cli_zeroshot_two_models_and_json(saved_model, tmp_path, capsys):
    import shutil

    import eval as eval_cli

    _, path = saved_model
    copy = shutil.copytree(path, tmp_path / "copy")  # a second model (the same model twice is refused)
    folder = image_folder(tmp_path / "folder")
    (tmp_path / "classes.json").write_text(
        json.dumps({"classnames": ["rosso", "verde", "blu"], "templates": ["una foto {}.", "un quadrato {}"]})
    )
    results = eval_cli.main(
        [
            "--model",
            path,
            "--model",
            str(copy),
            "--task",
            "zeroshot",
            "--dataset",
            f"imagefolder:{folder}",
            "--classnames",
            str(tmp_path / "classes.json"),
            "--templates",
            str(tmp_path / "classes.json"),
            "--output",
            str(tmp_path / "r.json"),
            "--cache_dir",
            str(tmp_path / "cache"),
        ]
    )
    assert len(results) == 2 and results[0]["metrics"] == results[1]["metrics"]
    assert set(results[0]["metrics"]) == {"acc1", "mean_per_class_recall"}  # no acc5 with 3 classes
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved[0]["task"] == "zeroshot_classification" and saved[0]["dataset"] == f"imagefolder:{folder}"
    assert "mean_per_class_recall" in capsys.readouterr().out


def test_eval_cli_zeroshot_builtin_imagenet(saved_model, tmp_path):
    import eval as eval_cli

    _, path = saved_model
    folder = image_folder(tmp_path / "folder", per_class=1)  # labels 0-2 of the 1000 classes
    for i in range(3, 1000):  # the other 997 class folders, empty: the class list must match the folders
        (folder / f"z{i:03d}").mkdir()
    result = eval_cli.main(
        [
            "--model",
            path,
            "--task",
            "zeroshot",
            "--dataset",
            f"imagefolder:{folder}",
            "--classnames",
            "it:imagenet",
            "--templates",
            "it:imagenet",
            "--cache_dir",
            str(tmp_path / "cache"),
        ]
    )[0]
    assert result["language"] == "it" and set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert np.load(next((tmp_path / "cache").glob("classes-*.npy"))).shape == (1000, 16)


def test_eval_skips_and_counts_bad_images_and_refuses_too_many(saved_model, tmp_path):
    import eval as eval_cli
    from clip_jax.data.pipeline import DataError

    _, path = saved_model
    folder = image_folder(tmp_path / "folder", per_class=10)
    (folder / "verde" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "c.json").write_text(
        json.dumps({"classnames": ["rosso", "verde", "blu"], "templates": ["un quadrato {}"]})
    )
    args = [
        "--model",
        path,
        "--task",
        "zeroshot",
        "--dataset",
        f"imagefolder:{folder}",
        "--classnames",
        str(tmp_path / "c.json"),
        "--templates",
        str(tmp_path / "c.json"),
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    result = eval_cli.main(args)[0]
    assert result["images"] == 30 and result["skipped"] == {"corrupt_image": 1}
    for i in range(3):
        (folder / "blu" / f"empty{i}.png").write_bytes(b"")
    with pytest.raises(
        DataError, match=r"4 of 34 examples .*could not be used .*empty_file.*--max_bad_fraction"
    ):
        eval_cli.main(args)
    assert eval_cli.main([*args, "--max_bad_fraction", "0.5"])[0]["skipped"] == {
        "corrupt_image": 1,
        "empty_file": 3,
    }


def test_class_names_must_match_the_data_set(saved_model, tmp_path):
    import eval as eval_cli

    _, path = saved_model
    folder = image_folder(tmp_path / "folder", per_class=1)
    with pytest.raises(
        ValueError,
        match=r"en:cifar10 has 10 class names \(airplane, .*\) but .* has 3 classes "
        r"\(blu, rosso, verde\)",
    ):
        eval_cli.main(
            [
                "--model",
                path,
                "--task",
                "zeroshot",
                "--dataset",
                f"imagefolder:{folder}",
                "--classnames",
                "en:cifar10",
                "--templates",
                "en:cifar10",
            ]
        )


def test_eval_cli_retrieval(saved_model, tmp_path):
    import eval as eval_cli

    _, path = saved_model
    folder = image_folder(tmp_path / "folder", per_class=2)
    rows = [
        {"image_path": str(p), "captions": [f"un quadrato {p.parent.name}", "una foto"]}
        for p in sorted(folder.rglob("*.png"))
    ]
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = eval_cli.main(["--model", path, "--task", "retrieval", "--data", str(tmp_path / "val.jsonl")])[0]
    m = result["metrics"]
    assert m["images"] == 6 and m["texts"] == 12
    assert m["text_retrieval_recall@10"] == 1.0 and 0 <= m["image_retrieval_mrr@1"] <= 1


def per_caption_and_grouped_listings(root, images=20, captions=3):
    """The same images and captions as an open_clip-style CSV (one row per caption, rows shuffled so an
    image's rows are apart) and as a JSONL listing with a ``captions`` list: (csv path, jsonl path)."""
    rs = np.random.RandomState(1)
    (root / "img").mkdir(parents=True)
    words = ["rosso", "verde", "blu", "cane", "gatto", "casa", "albero", "mare", "sole", "luna"]
    rows = []
    for i in range(images):
        Image.fromarray(rs.randint(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        caps = [" ".join(rs.choice(words, 3)) + f" {i} {j}" for j in range(captions)]
        rows.append({"image_path": f"img/{i}.png", "captions": caps})
    (root / "grouped.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    flat = [(r["image_path"], c) for r in rows for c in r["captions"]]
    flat = [flat[i] for i in rs.permutation(len(flat))]
    with open(root / "per_caption.csv", "w", newline="") as f:
        f.write("filepath,title\n" + "".join(f"{path},{caption}\n" for path, caption in flat))
    return str(root / "per_caption.csv"), str(root / "grouped.jsonl")


def test_retrieval_groups_rows_by_image(saved_model, tmp_path):
    """Issue 23: a per-caption CSV repeats each image; counted as separate items, 20 images x 3 captions gave
    image R@5 0.05 as CSV and 0.25 as JSONL. Rows are grouped by image: the numbers are the same."""
    from clip_jax.data.pipeline import load_eval_examples
    from clip_jax.evaluate.tasks.retrieval import run_retrieval

    model, path = saved_model
    csv_spec, jsonl_spec = per_caption_and_grouped_listings(tmp_path)
    per_caption = run_retrieval(model, path, csv_spec)["metrics"]
    grouped = run_retrieval(model, path, jsonl_spec)["metrics"]
    assert per_caption["images"] == grouped["images"] == 20 and per_caption["texts"] == grouped["texts"] == 60
    assert per_caption.keys() == grouped.keys()
    for name, value in grouped.items():
        assert per_caption[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    # the grouping itself: each image once, with the captions of all its rows
    _, csv_captions, _ = load_eval_examples(csv_spec, model.image_processor)
    _, jsonl_captions, _ = load_eval_examples(jsonl_spec, model.image_processor)
    assert sorted(map(sorted, csv_captions)) == sorted(map(sorted, jsonl_captions))
    # a limit counts images, and still gathers every caption of the images it keeps
    _, limited, _ = load_eval_examples(csv_spec, model.image_processor, limit=5)
    assert len(limited) == 5 and all(len(c) == 3 for c in limited)


def test_training_validation_groups_rows_by_image(tmp_path):
    """Issue 23: training's ``data.val`` reads a per-caption CSV as the JSONL with a captions list."""
    from train_helpers import tiny_config

    from clip_jax.train.trainer import Trainer

    csv_spec, jsonl_spec = per_caption_and_grouped_listings(tmp_path / "data")
    metrics = {}
    for name, spec in (("csv", csv_spec), ("jsonl", jsonl_spec)):
        config = tiny_config(tmp_path / "cache", **{"data.source": "files", "data.train": jsonl_spec})
        config.data.val = spec
        trainer = Trainer(config, str(tmp_path / name))
        assert len(trainer.val) == 20 and sum(map(len, trainer.val.captions)) == 60
        state = trainer.start_phase(trainer.phases[0], trainer.model.module).state
        metrics[name] = trainer.evaluate(state)
        trainer.lock.release()
    assert (
        metrics["csv"].keys() == metrics["jsonl"].keys() and "val/image_retrieval_recall@5" in metrics["csv"]
    )
    for name, value in metrics["jsonl"].items():
        if name != "val/loss":  # the loss takes each image's first caption, which depends on row order
            assert metrics["csv"][name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def clip_benchmark_build():
    """clip_benchmark's own `build` command (``clip_benchmark.cli.main_build``, the reader of its result files),
    taken from the installed package's source: importing ``clip_benchmark.cli`` needs torchvision and
    open_clip, which its results reader never uses (CI installs it with ``pip install --no-deps``)."""
    import ast
    import csv
    import importlib.util
    import os

    spec = importlib.util.find_spec("clip_benchmark")
    if spec is None:
        pytest.skip("clip_benchmark is not installed: pip install --no-deps clip-benchmark==1.6.2")
    source = Path(spec.origin).with_name("cli.py").read_text()
    function = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name == "main_build"
    )
    namespace = {"json": json, "csv": csv, "os": os}
    exec(compile(ast.Module(body=[function], type_ignores=[]), "clip_benchmark/cli.py", "exec"), namespace)
    return namespace["main_build"]


def test_clip_benchmark_build_reads_eval_output(saved_model, tmp_path):
    import argparse
    import csv

    import eval as eval_cli

    build = clip_benchmark_build()
    _, path = saved_model
    folder = image_folder(tmp_path / "folder", per_class=2)
    rows = [
        {"image_path": str(p), "captions": [f"un quadrato {p.parent.name}", "una foto"]}
        for p in sorted(folder.rglob("*.png"))
    ]
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = str(tmp_path / "results") + "/"
    retrieval = eval_cli.main(
        ["--model", path, "--task", "retrieval", "--data", str(tmp_path / "val.jsonl"), "--output", out]
    )[0]
    (tmp_path / "classes.json").write_text(
        json.dumps({"classnames": sorted(p.name for p in folder.iterdir())})
    )
    zeroshot = eval_cli.main(
        [
            "--model",
            path,
            "--task",
            "zeroshot",
            "--dataset",
            f"imagefolder:{folder}",
            "--classnames",
            str(tmp_path / "classes.json"),
            "--templates",
            "it:cifar10",
            "--output",
            out,
            "--cache_dir",
            str(tmp_path / "cache"),
        ]
    )[0]
    assert len(list((tmp_path / "results").glob("*.json"))) == 2
    build(argparse.Namespace(files=[str(tmp_path / "results")], output=str(tmp_path / "benchmark.csv")))
    with open(tmp_path / "benchmark.csv") as f:
        table = {row["task"]: row for row in csv.DictReader(f)}
    assert set(table) == {"zeroshot_retrieval", "zeroshot_classification"}
    for task, record in (("zeroshot_retrieval", retrieval), ("zeroshot_classification", zeroshot)):
        row = table[task]
        assert row["pretrained"] == path and row["model"].startswith(
            "clip_vision_model-2L-32d-p8-32px+bert-2L"
        )
        assert row["model_fullname"] == f"{row['model']} {path}"
        for metric, value in record["metrics"].items():
            assert float(row[metric]) == pytest.approx(value)
    assert table["zeroshot_classification"]["language"] == "it"
    assert float(table["zeroshot_retrieval"]["text_retrieval_recall@10"]) == 1.0


def test_embedding_maps(saved_model, tmp_path):
    pytest.importorskip("matplotlib")
    from clip_jax.evaluate.tasks.embedmap import run_embedmap

    model, path = saved_model
    folder = image_folder(tmp_path / "folder", per_class=6)
    (tmp_path / "c.json").write_text(
        json.dumps({"classnames": ["blu", "rosso", "verde"], "templates": ["{}"]})
    )
    for method in ("pca", "umap"):
        if method == "umap":
            pytest.importorskip("umap")
        result = run_embedmap(
            model,
            path,
            f"imagefolder:{folder}",
            str(tmp_path / "c.json"),
            str(tmp_path / "c.json"),
            str(tmp_path / f"{method}.png"),
            layers=True,
            method=method,
        )
        png = tmp_path / f"{method}.png"
        assert str(png) in result["metrics"]["files"]
        with Image.open(png) as image:
            assert image.size[0] > 1000  # 1 + 3 panels (embeddings, 2 layers + input) side by side
    layers = model.encode_image_layers([Image.new("RGB", (32, 32))])
    assert layers.shape == (
        1 + model.module.vision.config.num_hidden_layers,
        1,
        model.module.vision.config.hidden_size,
    )


def test_bad_inputs(saved_model, tmp_path):
    from clip_jax import load_model
    from clip_jax.data.benchmarks import load_labelled
    from clip_jax.evaluate.zeroshot import zero_shot
    from clip_jax.weights import CheckpointError

    model, _ = saved_model
    with pytest.raises(ValueError, match="Unknown data set"):
        load_labelled("folder:/x")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        load_labelled(f"imagefolder:{tmp_path / 'empty'}")
    folder = image_folder(tmp_path / "f")
    images, labels, _ = load_labelled(f"imagefolder:{folder}")
    with pytest.raises(ValueError, match="only 2 class names"):
        zero_shot(model, images, labels, ["a", "b"], ["{}"])
    with pytest.raises(CheckpointError, match="No such checkpoint directory"):
        load_model(str(tmp_path / "missing" / "model"))


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_dataset_built_on_disk(saved_model, tmp_path, file_format):
    """A real TFDS data set, built into a temporary data_dir (no download), read back through
    ``tfds:NAME:SPLIT?data_dir=...`` and evaluated with eval.py. array_record is read without TensorFlow
    (tfds.data_source); tfrecord, tfds's default, with tf.data."""
    tfds = pytest.importorskip("tensorflow_datasets", reason="tfds: data sets need the [tfds] extra")
    if file_format == "tfrecord":
        pytest.importorskip("tensorflow", reason="tfrecord TFDS data needs tensorflow (not in any extra)")
    import eval as eval_cli
    from clip_jax.data.benchmarks import load_labelled

    colours = {"rosso": (220, 30, 30), "verde": (30, 170, 40), "blu": (30, 60, 220)}

    class TinyColours(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(colours)),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(2), "test": self._generate_examples(7)}

        def _generate_examples(self, n):
            for i in range(n):  # width 24 + i tells the examples apart
                yield (
                    i,
                    {"image": Image.new("RGB", (24 + i, 20), list(colours.values())[i % 3]), "label": i % 3},
                )

    data_dir = tmp_path / "tfds"
    TinyColours(data_dir=data_dir, file_format=file_format).download_and_prepare()
    assert list(data_dir.rglob(f"*.{file_format}*"))
    spec = f"tfds:tiny_colours:test?data_dir={data_dir}"  # read by a builder that only knows the files
    images, labels, names = load_labelled(spec)
    assert names == ["rosso", "verde", "blu"] and labels.dtype.kind == "i"
    got = sorted(
        (image.size, image.mode, image.getpixel((0, 0)), int(label)) for image, label in zip(images, labels)
    )
    assert got == [((24 + i, 20), "RGB", list(colours.values())[i % 3], i % 3) for i in range(7)]
    assert len(load_labelled(spec, limit=3)[0]) == 3
    assert len(load_labelled(f"tfds:tiny_colours:train?data_dir={data_dir}")[0]) == 2

    _, path = saved_model
    (tmp_path / "c.json").write_text(json.dumps({"classnames": names, "templates": ["un quadrato {}"]}))
    result = eval_cli.main(
        [
            "--model",
            path,
            "--task",
            "zeroshot",
            "--dataset",
            spec,
            "--classnames",
            str(tmp_path / "c.json"),
            "--templates",
            str(tmp_path / "c.json"),
        ]
    )[0]
    assert result["dataset"] == spec and "acc5" not in result["metrics"]  # 3 classes


def test_hf_labelled_data_skips_and_counts_bad_images(tmp_path):
    """An hf: zero-shot data set with a corrupt and a truncated image: both skipped and counted by reason, and the
    max_bad_fraction guard refuses metrics on what is left when they are too many."""
    import io

    datasets = pytest.importorskip("datasets")
    from clip_jax.data.benchmarks import load_labelled
    from clip_jax.data.pipeline import DataError, check_bad_fraction

    def png(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (20, 16), colour).save(buffer, "PNG")
        return buffer.getvalue()

    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    noise = buffer.getvalue()
    good = [{"bytes": png(c), "path": None} for c in ((220, 30, 30), (30, 170, 40), (30, 60, 220))] * 3
    bad = [
        {"bytes": b"\x89PNG\r\n\x1a\n not really", "path": None},
        {"bytes": noise[: len(noise) // 2], "path": None},  # cut short
    ]
    features = datasets.Features(
        {"img": datasets.Image(), "y": datasets.ClassLabel(names=["rosso", "verde", "blu"])}
    )
    data = datasets.Dataset.from_dict(
        {"img": good[:4] + bad[:1] + good[4:] + bad[1:], "y": [0, 1, 2, 0, 1, 1, 2, 0, 1, 2, 2]},
        features=features,
    )
    data.save_to_disk(str(tmp_path / "saved"))
    spec = f"hf:{tmp_path / 'saved'}?image=img&label=y"
    skipped: dict = {}
    images, labels, names = load_labelled(spec, skipped=skipped)
    assert names == ["rosso", "verde", "blu"] and len(images) == 9
    assert list(labels) == [0, 1, 2, 0, 1, 2, 0, 1, 2]  # the bad rows' labels left out with them
    assert images[1].getpixel((0, 0)) == (30, 170, 40)
    assert skipped == {"corrupt_image": 2}
    check_bad_fraction(spec, skipped, len(images), 0.25)  # 2 of 11: allowed
    with pytest.raises(DataError, match=r"2 of 11 examples .* --max_bad_fraction"):
        check_bad_fraction(spec, skipped, len(images), 0.1)
    with pytest.raises(ValueError, match=r"no column\(s\) \['label'\].*label=COLUMN"):
        load_labelled(f"hf:{tmp_path / 'saved'}?image=img")


def _write_many(output, who, n):
    from clip_jax.evaluate.run import write_results

    for i in range(n):
        record = {"dataset": f"d{i}", "model": "m", "pretrained": who, "task": "t", "metrics": {"acc1": i}}
        write_results([record], output)


def test_eval_output_is_checked_first_and_concurrent_writers_all_land(tmp_path):
    """--output that is some other file is refused before any evaluation (the model named here does not even
    exist); two processes writing to one results file at once keep every record; a rerun replaces its own."""
    import multiprocessing

    from clip_jax.evaluate.cli import main as eval_main
    from clip_jax.evaluate.run import read_results, write_results

    other = tmp_path / "train.jsonl"
    other.write_text('{"image": "a.png"}\n')
    with pytest.raises(ValueError, match="exists and is not eval's results"):
        eval_main(
            [
                "--model",
                str(tmp_path / "none"),
                "--task",
                "retrieval",
                "--data",
                "jsonl:x",
                "--output",
                str(other),
            ]
        )
    assert other.read_text() == '{"image": "a.png"}\n'

    output = tmp_path / "results.json"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(output), who, 15)) for who in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
        assert w.exitcode == 0
    records = read_results(output)
    assert sorted((r["pretrained"], r["dataset"]) for r in records) == sorted(
        (who, f"d{i}") for who in ("a", "b") for i in range(15)
    )
    write_results(
        [{**records[0], "metrics": {"acc1": 99}}], output
    )  # the same eval again: replaced, not added
    again = read_results(output)
    assert len(again) == 30 and again[-1]["metrics"] == {"acc1": 99}


def test_small_silent_cases_are_errors_or_counted(saved_model, tmp_path, caplog):
    """Issue 23: cases that gave a silently wrong answer."""
    import eval as eval_cli
    from clip_jax.data.benchmarks import load_labelled

    model, path = saved_model
    # classify(top_k=0) returned one entry per image
    with pytest.raises(ValueError, match=r"top_k=0 — use a whole number >= 1"):
        model.classify([Image.new("RGB", (40, 36))], ["rosso", "verde"], top_k=0)
    # NaN pixels gave NaN embeddings
    pixels = np.zeros((2, 32, 32, 3), np.float32)
    pixels[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 of 2 preprocessed images in a batch hold NaN or infinite pixel"):
        model.encode_image(pixels)
    # .heic / .svg files vanished from eval with skipped {}: they are counted
    folder = image_folder(tmp_path / "folder", per_class=3)
    (folder / "rosso" / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (folder / "blu" / "logo.svg").write_text("<svg/>")
    (folder / "blu" / "notes.txt").write_text("not an image, not counted")
    skipped = {}
    images, _, classes = load_labelled(f"imagefolder:{folder}", skipped=skipped)
    assert len(images) == 9 and skipped == {"unsupported_format": 2} and classes == ["blu", "rosso", "verde"]
    # an empty class folder is kept (a subset keeps its class indices) but said
    (folder / "viola").mkdir()
    with caplog.at_level("WARNING", logger="clip_jax.data.benchmarks"):
        assert load_labelled(f"imagefolder:{folder}")[2] == ["blu", "rosso", "verde", "viola"]
    assert "1 class folder(s) hold no images (viola)" in caplog.text
    (folder / "viola").rmdir()
    # class names: duplicates and wrong types in a user's file
    names = tmp_path / "names.json"
    for data, needle in (
        (
            {"classnames": ["blu", "blu", "verde"], "templates": ["una foto di {}"]},
            r"names \['blu'\] more than once",
        ),
        ({"classnames": "blu,rosso,verde"}, r"classnames must be a list of non-empty strings, not str — fix"),
        (
            {"classnames": ["blu", 2, None]},
            r"classnames must be a list of non-empty strings, not a list holding",
        ),
        (["blu", "rosso"], r"has no 'classnames' list — write"),
    ):
        names.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=needle):
            load_resource(str(names), "classnames")
    # the same model twice reported two results and wrote one file
    with pytest.raises(ValueError, match=r"--model .* is given more than once — give each model once"):
        eval_cli.main(["--model", path, "--model", path, "--task", "retrieval", "--data", "val.jsonl"])


def test_a_corrupt_config_json_is_named(saved_model, tmp_path):
    """Issue 23: a corrupt config.json said "Expecting value: line 6 column 6" without naming the file."""
    import shutil

    from clip_jax import load_model
    from clip_jax.weights import CheckpointError

    _, path = saved_model
    copy = tmp_path / "m"
    shutil.copytree(path, copy)
    (copy / "config.json").write_text(
        '{\n  "model_type": "vision-text-dual-encoder",\n  "projection_dim": ,\n}'
    )
    with pytest.raises(
        CheckpointError, match=rf"{copy / 'config.json'} is not valid JSON .* — the file is damaged"
    ):
        load_model(str(copy))


def test_a_new_eval_task_is_one_registration(saved_model, tmp_path):
    """Issue 26: an evaluation task is an EvalTask registered from its own module; clip-jax eval takes its
    options, refuses a run without the ones it needs, and writes its record like any other's."""
    import eval as eval_cli
    from clip_jax.evaluate.run import read_results, result_record
    from clip_jax.evaluate.tasks import TASKS, EvalTask, register_task, tasks

    assert set(tasks()) >= {"zeroshot", "retrieval", "embedmap"}
    _, path = saved_model

    def text_norms(model, name, args, index):
        texts = args.texts.split(",")
        norms = np.linalg.norm(model.encode_text(texts, normalize=False), axis=1)
        return result_record(model, name, "texts", "text_norms", "", {"mean_norm": float(norms.mean())})

    register_task(
        EvalTask("text_norms", "mean text embedding norm", (("--texts", {}),), ("texts",), text_norms)
    )
    try:
        with pytest.raises(SystemExit):
            eval_cli.parse_args(["--model", path, "--task", "text_norms"])  # --texts missing
        out = tmp_path / "results.json"
        (record,) = eval_cli.main(
            ["--model", path, "--task", "text_norms", "--texts", "un gatto,un cane", "--output", str(out)]
        )
        model = CLIPModel.from_pretrained(path)
        expected = np.linalg.norm(model.encode_text(["un gatto", "un cane"], normalize=False), axis=1).mean()
        assert record["metrics"]["mean_norm"] == pytest.approx(float(expected), rel=1e-5)
        assert read_results(out)[0]["task"] == "text_norms"
    finally:
        del TASKS["text_norms"]
