"""Multilingual retrieval benchmarks (Crossmodal-3600, XTD10, Multi30k) read from tiny copies written in the
exact file layouts of their distributions; metrics checked against retrieval_metrics on hand-paired data."""

import gzip
import json

import pytest
from PIL import Image

from clip_jax import CLIPModel
from clip_jax.data.benchmarks import caption_benchmark
from clip_jax.data.sources import parse_source
from clip_jax.evaluate.retrieval import benchmark_names, retrieval_metrics

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def write_images(directory, names):
    """One differently coloured square per name (so a wrong image–caption pairing changes the metrics)."""
    directory.mkdir(parents=True, exist_ok=True)
    images = []
    for i, name in enumerate(names):
        image = Image.new("RGB", (40, 40), COLOURS[i % len(COLOURS)])
        image.paste((i * 40 % 255, 0, 0), (i * 5, i * 5, i * 5 + 10, i * 5 + 10))
        image.save(directory / name, format="JPEG", quality=95)
        images.append(Image.open(directory / name).convert("RGB"))
    return images


def xm3600(root, n=4):
    """captions.jsonl as Crossmodal-3600 ships it (image/key, image/locale, one object per language)."""
    keys = [f"{i:016x}" for i in range(n)]
    images = write_images(root / "images", [f"{k}.jpg" for k in keys])
    rows = [
        {
            "image/key": k,
            "image/locale": "it",
            "en": {"caption": [f"a square {i}", f"another {i}"], "caption/tokenized": [f"a square {i}"]},
            "it": {
                "caption": [f"un quadrato {i}", f"un altro {i}", f"terzo {i}"],
                "caption/tokenized": [f"un quadrato {i}"],
            },
        }
        for i, k in enumerate(keys)
    ]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return images, rows


def xtd10(root, n=4, language="it", folder=""):
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(n)]
    images = write_images(root / "images", names)
    (root / "test_image_names.txt").write_text("\n".join(names) + "\n")
    captions = [f"un cerchio rosso {i}" for i in range(n)]
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / f"test_1kcaptions_{language}.txt").write_text("\n".join(captions) + "\n")
    return images, names, captions


def multi30k(root, n=4):
    names = [f"{1000092795 + i}.jpg" for i in range(n)]
    images = write_images(root / "flickr30k-images", names)
    (root / "data/task1/image_splits").mkdir(parents=True)
    (root / "data/task1/raw").mkdir(parents=True)
    (root / "data/task1/image_splits/test_2016_flickr.txt").write_text("\n".join(names) + "\n")
    captions = [f"Zwei Hunde {i}" for i in range(n)]
    (root / "data/task1/raw/test_2016_flickr.de.gz").write_bytes(
        gzip.compress(("\n".join(captions) + "\n").encode())
    )
    return images, names, captions


def test_xm3600_first_caption_by_default_all_as_option(tmp_path):
    _, rows = xm3600(tmp_path)
    first = caption_benchmark(f"xm3600:{tmp_path}?language=it")
    assert len(first) == 4
    for i, row in enumerate(rows):
        record = first[i]
        assert record["captions"] == row["it"]["caption"][:1]
        assert record["path"] == str(tmp_path / "images" / f"{row['image/key']}.jpg")
        assert record["image"] == (tmp_path / "images" / f"{row['image/key']}.jpg").read_bytes()
    every = parse_source(f"xm3600:{tmp_path}?language=it&captions=all")  # the one source-spec parser
    assert [every[i]["captions"] for i in range(4)] == [r["it"]["caption"] for r in rows]
    assert caption_benchmark(f"xm3600:{tmp_path}?language=en")[2]["captions"] == ["a square 2"]


def test_xtd10_pairs_lines_and_finds_mic_folder(tmp_path):
    _, names, captions = xtd10(tmp_path)
    source = caption_benchmark(f"xtd10:{tmp_path}?language=it")
    assert [source[i]["captions"] for i in range(4)] == [[c] for c in captions]
    assert [source[i]["path"] for i in range(4)] == [str(tmp_path / "images" / n) for n in names]
    xtd10(tmp_path / "de", language="de", folder="MIC")  # German captions live in the repository's MIC/
    assert caption_benchmark(f"xtd10:{tmp_path / 'de'}?language=de")[0]["captions"] == ["un cerchio rosso 0"]


def test_multi30k_test_split_is_2016_flickr_gzipped(tmp_path):
    _, names, captions = multi30k(tmp_path)
    source = caption_benchmark(f"multi30k:{tmp_path}?language=de&split=test")
    assert [source[i]["captions"] for i in range(4)] == [[c] for c in captions]
    assert source[3]["path"] == str(tmp_path / "flickr30k-images" / names[3])


def test_bad_specs_name_the_problem(tmp_path):
    xm3600(tmp_path)
    with pytest.raises(ValueError, match="no language 'xx'.*'en', 'it'"):
        caption_benchmark(f"xm3600:{tmp_path}?language=xx")
    with pytest.raises(ValueError, match="names no language"):
        caption_benchmark(f"xm3600:{tmp_path}")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['lang'\].*valid: language, captions"):
        caption_benchmark(f"xm3600:{tmp_path}?lang=it")
    with pytest.raises(ValueError, match="captions=first"):
        caption_benchmark(f"xm3600:{tmp_path}?language=it&captions=some")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        caption_benchmark(f"xtd10:{tmp_path / 'nowhere'}?language=it")
    with pytest.raises(FileNotFoundError, match="test_image_names.txt"):
        caption_benchmark(f"xtd10:{tmp_path}?language=it")
    with pytest.raises(FileNotFoundError, match="multi30k/dataset"):
        caption_benchmark(f"multi30k:{tmp_path}?language=de")
    _, _names, _ = xtd10(tmp_path / "x")
    (tmp_path / "x/test_1kcaptions_it.txt").write_text("solo una\n")
    with pytest.raises(ValueError, match="4 images but .* 1 captions"):
        caption_benchmark(f"xtd10:{tmp_path / 'x'}?language=it")


@pytest.fixture(scope="module")
def saved_model(checkpoints, tmp_path_factory):
    model = CLIPModel.from_towers(
        vision=checkpoints["paths"]["vision"], text=checkpoints["paths"]["bert"], projection_dim=16
    )
    return model, str(model.save_pretrained(tmp_path_factory.mktemp("model") / "m"))


@pytest.mark.parametrize("kind", ["xm3600-all", "xtd10", "multi30k"])
def test_eval_cli_retrieval_on_benchmarks(saved_model, tmp_path, kind):
    """eval.py's retrieval on each benchmark equals retrieval_metrics over the images and captions paired
    by hand; a missing image is skipped and counted."""
    import eval as eval_cli

    model, path = saved_model
    if kind == "xm3600-all":
        images, rows = xm3600(tmp_path)
        captions = [r["it"]["caption"] for r in rows]
        spec, language = f"xm3600:{tmp_path}?language=it&captions=all", "it"
    elif kind == "xtd10":
        images, _, caps = xtd10(tmp_path)
        captions, spec, language = [[c] for c in caps], f"xtd10:{tmp_path}?language=it", "it"
    else:
        images, _, caps = multi30k(tmp_path)
        captions, spec, language = [[c] for c in caps], f"multi30k:{tmp_path}?language=de&split=test", "de"
    missing = next(p for p in sorted(tmp_path.rglob("*.jpg")))
    index = next(i for i in range(len(images)) if caption_benchmark(spec)[i]["path"] == str(missing))
    missing.unlink()
    del images[index], captions[index]

    # One of the 4 images is missing (25%): allowed explicitly, as the default guard (10%) would refuse it.
    result = eval_cli.main(
        ["--model", path, "--task", "retrieval", "--data", spec, "--max_bad_fraction", "0.5"]
    )[0]
    texts = [c for caps in captions for c in caps]
    expected = benchmark_names(
        retrieval_metrics(
            model.encode_image(images),
            model.encode_text(texts),
            [i for i, caps in enumerate(captions) for _ in caps],
        )
    )
    m = result["metrics"]
    assert (m["images"], m["texts"], m["skipped"]) == (len(images), len(texts), 1)
    assert result["language"] == language and result["dataset"] == spec
    for name in (
        "text_retrieval_recall@1",
        "text_retrieval_recall@5",
        "image_retrieval_recall@10",
        "image_retrieval_mrr@10",
        "text_retrieval_mrr@1",
    ):
        assert m[name] == pytest.approx(expected[name], abs=1e-6), name
