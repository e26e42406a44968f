"""The input pipeline on small real datasets written on the fly: every source format, sharding
across processes, determinism, resumption, image modes and bad data."""

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import ImageProcessorConfig
from clip_jax.data.pipeline import (
    BadDataMonitor,
    BadExample,
    DataError,
    ExampleStream,
    ExampleTransform,
    TrainBatches,
    decode_image,
    load_eval_examples,
    process_examples,
)
from clip_jax.data.sources import FileSource, WebDatasetSource, expand_braces, parse_mixture, parse_source
from clip_jax.data.to_webdataset import convert

PROCESSOR = ImageProcessorConfig.for_image_size(32)


def write_images(root, n=12):
    """n real image files (JPEG and PNG, odd sizes) with Italian captions; CLIP-Italian-style JSONL listing."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    rs = np.random.RandomState(0)
    for i in range(n):
        array = rs.randint(0, 256, (20 + i, 30 + 2 * i, 3), dtype=np.uint8)
        name = f"img/{i:03d}." + ("jpg" if i % 2 else "png")
        Image.fromarray(array).save(root / name)
        rows.append({"image_path": name, "captions": [f"foto numero {i}", f"immagine {i}"]})
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def test_listing_formats_and_relative_paths(tmp_path):
    rows = write_images(tmp_path)
    with open(tmp_path / "train.csv", "w", newline="") as f:  # open_clip's CSV
        writer = csv.DictWriter(f, ["filepath", "title"])
        writer.writeheader()
        writer.writerows(
            {"filepath": str(tmp_path / r["image_path"]), "title": r["captions"][0]} for r in rows
        )
    (tmp_path / "train.json").write_text(json.dumps({"data": rows}))
    with open(tmp_path / "train.tsv", "w") as f:
        f.write("image\ttext\n" + "".join(f"{r['image_path']}\t{r['captions'][1]}\n" for r in rows))
    for spec, captions in (
        (str(tmp_path / "train.jsonl"), 2),
        (f"csv:{tmp_path / 'train.csv'}", 1),
        (str(tmp_path / "train.json"), 2),
        (str(tmp_path / "train.tsv"), 1),
    ):
        source = parse_source(spec)
        assert isinstance(source, FileSource) and len(source) == 12
        record = source[3]
        assert record["image"] == (tmp_path / rows[3]["image_path"]).read_bytes()
        assert len(record["captions"]) == captions
    with pytest.raises(ValueError, match="cannot find the image/caption columns"):
        (tmp_path / "odd.jsonl").write_text(json.dumps({"a": 1}) + "\n")
        parse_source(str(tmp_path / "odd.jsonl"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_source(str(tmp_path / "missing.jsonl"))


def test_webdataset_conversion_round_trip(tmp_path):
    rows = write_images(tmp_path)
    pattern, counts = convert(str(tmp_path / "train.jsonl"), str(tmp_path / "shards" / "train"), shard_size=5)
    assert counts == {"written": 12}
    assert pattern.endswith("train-{00000..00002}.tar")
    source = parse_source(f"wds:{pattern}")
    assert isinstance(source, WebDatasetSource) and len(source.shards) == 3
    examples = [e for shard in source.shards for e in source.read_shard(shard)]
    assert [e["captions"] for e in examples] == [r["captions"] for r in rows]
    assert examples[4]["image"] == (tmp_path / rows[4]["image_path"]).read_bytes()
    assert expand_braces("a-{08..11}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar", "a-11.tar"]


def test_brace_patterns_expand_as_webdataset_does():
    """Against braceexpand, the expansion webdataset itself uses for shard URLs."""
    from braceexpand import braceexpand

    for pattern in (
        "a-{08..11}.tar",
        "/d/{train,val}-{000..002}.tar",
        "gs://b/{wit,cc}/part-{0..3}.tar",
        "x-{a,b,c}.tar",
        "plain.tar",
        "{train,val}.tar",
    ):
        assert expand_braces(pattern) == list(braceexpand(pattern)), pattern


def test_converter_writes_txt_captions_and_json_for_several(tmp_path):
    """One caption: <key>.txt (the WebDataset convention; webdataset's own reader sees it); several: <key>.json."""
    import webdataset

    rows = write_images(tmp_path)
    rows = [dict(r, captions=r["captions"][:1]) if i % 3 else r for i, r in enumerate(rows)]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pattern, _ = convert(str(tmp_path / "mixed.jsonl"), str(tmp_path / "shards" / "t"), shard_size=5)
    with tarfile.open(tmp_path / "shards" / "t-00000.tar") as tar:
        names = tar.getnames()
    assert names[:4] == ["000000000.png", "000000000.json", "000000001.jpg", "000000001.txt"]
    theirs = list(webdataset.WebDataset(pattern, shardshuffle=False))
    assert [s["txt"].decode() for s in theirs if "txt" in s] == [
        r["captions"][0] for i, r in enumerate(rows) if i % 3
    ]
    assert [json.loads(s["json"])["captions"] for s in theirs if "json" in s] == [
        r["captions"] for i, r in enumerate(rows) if not i % 3
    ]
    source = parse_source(f"wds:{pattern}")
    assert [e["captions"] for shard in source.shards for e in source.read_shard(shard)] == [
        r["captions"] for r in rows
    ]


def test_shard_brace_lists_in_a_mixture(tmp_path):

    write_images(tmp_path / "train", n=4)
    write_images(tmp_path / "val", n=3)
    for split in ("train", "val"):
        convert(str(tmp_path / split / "train.jsonl"), str(tmp_path / "shards" / split), shard_size=2)
    spec = f"wds:{tmp_path}/shards/{{train,val}}-{{00000..00001}}.tar=2,{tmp_path / 'val' / 'train.jsonl'}"
    mixture = parse_mixture(spec)
    assert [w for _, w in mixture] == [2.0, 1.0] and mixture[0][0].endswith("{train,val}-{00000..00001}.tar")
    source = parse_source(mixture[0][0])
    assert [Path(s).name for s in source.shards] == [
        "train-00000.tar",
        "train-00001.tar",
        "val-00000.tar",
        "val-00001.tar",
    ]
    assert sum(1 for shard in source.shards for _ in source.read_shard(shard)) == 7


def test_webdataset_member_names_are_not_paths(tmp_path):
    """A hostile member name is only a key: nothing is written outside (or at all)."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "PNG")
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        for name, payload in (("../../escape.png", buffer.getvalue()), ("../../escape.txt", b"una foto")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    examples = list(WebDatasetSource(str(tmp_path / "evil.tar")).read_shard(str(tmp_path / "evil.tar")))
    assert len(examples) == 1 and examples[0]["captions"] == ["una foto"]
    assert not (tmp_path.parent.parent / "escape.png").exists()


def stream(spec, process_index=0, process_count=1, seed=0, train=True, worker_processes=0):
    return ExampleStream(
        spec,
        ExampleTransform(PROCESSOR, train=train),
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        workers=2,
        worker_processes=worker_processes,
    )


def captions_of(examples):
    return [e["caption"] for e in examples]


@pytest.mark.parametrize("kind", ["files", "wds"])
def test_two_processes_read_disjoint_parts_covering_the_epoch(tmp_path, kind):
    write_images(tmp_path)
    spec = str(tmp_path / "train.jsonl")
    if kind == "wds":
        spec = "wds:" + convert(spec, str(tmp_path / "s" / "t"), shard_size=3)[0]
    seen = []
    for process in range(2):
        s = stream(spec, process, 2)
        seen.append({next(s)["caption"].split()[-1] for _ in range(6)})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {str(i) for i in range(12)}


def test_same_seed_same_order_new_epoch_new_order(tmp_path):
    write_images(tmp_path)
    spec = str(tmp_path / "train.jsonl")
    a, b, c = stream(spec), stream(spec), stream(spec, seed=1)
    first = captions_of(next(a) for _ in range(24))
    assert first == captions_of(next(b) for _ in range(24))
    assert first != captions_of(next(c) for _ in range(24))
    order = lambda caps: [x.split()[-1] for x in caps]
    assert order(first[:12]) != order(first[12:])  # reshuffled for epoch 2
    assert sorted(order(first[12:]), key=int) == [str(i) for i in range(12)]


@pytest.mark.parametrize("kind", ["files", "wds"])
def test_resume_yields_exactly_the_next_batches(tmp_path, kind):
    write_images(tmp_path)
    spec = str(tmp_path / "train.jsonl")
    if kind == "wds":
        spec = "wds:" + convert(spec, str(tmp_path / "s" / "t"), shard_size=5)[0]
    tokenize = lambda texts: {"input_ids": np.array([[len(t)] for t in texts])}
    batches = TrainBatches(stream(spec), 4, tokenize, BadDataMonitor(spec))
    for _ in range(4):
        next(batches)
    state = json.loads(json.dumps(batches.get_state()))  # what a checkpoint stores
    expected = [next(batches) for _ in range(3)]
    resumed = TrainBatches(stream(spec), 4, tokenize, BadDataMonitor(spec))
    resumed.set_state(state)
    for want, got in zip(expected, (next(resumed) for _ in range(3))):
        np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"])


@pytest.mark.parametrize("kind", ["files", "wds"])
def test_one_pass_over_each_process_part_for_feature_caching(tmp_path, kind):
    """What a cached-features phase reads: every example once, split between processes, all captions."""
    rows = write_images(tmp_path)
    spec = str(tmp_path / "train.jsonl")
    if kind == "wds":
        spec = "wds:" + convert(spec, str(tmp_path / "s" / "t"), shard_size=3)[0]
    parts = []
    for process in range(2):
        chunks = list(process_examples(spec, PROCESSOR, process_index=process, process_count=2, chunk=4))
        assert all(len(pixels) == len(caps) <= 4 for pixels, caps in chunks)
        parts.append([tuple(c) for _, caps in chunks for c in caps])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(tuple(r["captions"]) for r in rows)
    pixels, _ = next(process_examples(spec, PROCESSOR, chunk=100))
    expected, _, _ = load_eval_examples(spec, PROCESSOR)
    np.testing.assert_array_equal(pixels, expected)  # evaluation preprocessing, no augmentation


@pytest.mark.parametrize("kind", ["files", "wds"])
def test_worker_processes_give_the_same_examples_and_resume(tmp_path, kind):
    """Decoding in worker processes changes nothing in what comes out, nor in resuming."""
    write_images(tmp_path)
    spec = str(tmp_path / "train.jsonl")
    if kind == "wds":
        spec = "wds:" + convert(spec, str(tmp_path / "s" / "t"), shard_size=5)[0]
    threads = stream(spec, 1, 2)
    expected = [next(threads) for _ in range(9)]
    processes = stream(spec, 1, 2, worker_processes=2)
    try:
        got = [next(processes) for _ in range(5)]
        state = json.loads(json.dumps(processes.get_state()))
    finally:
        processes.close()
    resumed = stream(spec, 1, 2, worker_processes=2)
    resumed.set_state(state)
    try:
        got += [next(resumed) for _ in range(4)]
    finally:
        resumed.close()
    assert captions_of(got) == captions_of(expected)
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(have["pixel_values"], want["pixel_values"])


@pytest.mark.parametrize("kind", ["files", "wds"])
def test_skip_counts_are_reported_at_the_end_of_each_epoch(tmp_path, kind, caplog):
    rows = write_images(tmp_path, n=8)
    rows += [
        {"image_path": "img/missing.jpg", "captions": ["manca"]},
        {"image_path": rows[0]["image_path"], "captions": [""]},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = str(tmp_path / "train.jsonl")
    if kind == "wds":  # the converter refuses to write the missing image and the empty caption
        spec = "wds:" + convert(spec, str(tmp_path / "s" / "t"), shard_size=4)[0]
        (tmp_path / "s" / "t-00001.tar").write_bytes(b"not a tar file at all")
    monitor = BadDataMonitor(spec, max_bad_fraction=0.9, report_every=10**9)
    batches = TrainBatches(stream(spec), 4, lambda t: {}, monitor)
    with caplog.at_level("WARNING", logger="clip_jax.data.pipeline"):
        for _ in range(3):  # 12 good examples: the first epoch has at most 8
            next(batches)
    reports = [r.getMessage() for r in caplog.records if "End of epoch 0" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in caplog.records]
    assert spec in reports[0] and "Skipped" in reports[0]
    reason = {"files": "missing_file", "wds": "corrupt_shard"}[kind]
    assert reason in reports[0]


def encoded(image, fmt="PNG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_every_image_mode_becomes_rgb():
    rs = np.random.RandomState(0)
    rgb = Image.fromarray(rs.randint(0, 256, (10, 12, 3), dtype=np.uint8))
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    sixteen = Image.fromarray((np.arange(120).reshape(10, 12) * 500).astype(np.uint16))
    for image, fmt in (
        (rgb.convert("L"), "PNG"),
        (rgb.convert("LA"), "PNG"),
        (palette, "PNG"),
        (rgb.convert("RGBA"), "PNG"),
        (rgb.convert("CMYK"), "JPEG"),
        (sixteen, "PNG"),
        (rgb, "WEBP"),
    ):
        out = decode_image(encoded(image, fmt))
        assert out.mode == "RGB" and out.size == (12, 10), image.mode
    bright = np.asarray(decode_image(encoded(sixteen)))
    assert bright.max() > 200 and bright.min() == 0  # 16-bit range scaled, not clipped to white


def test_exif_orientation_is_honoured():
    image = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 8  # rotate 90°
    assert decode_image(encoded(image, "JPEG", exif=exif)).size == (10, 30)


def test_bad_examples_are_skipped_and_counted(tmp_path, monkeypatch):
    rows = write_images(tmp_path, n=10)
    (tmp_path / "img" / "zero.jpg").write_bytes(b"")
    data = (tmp_path / rows[1]["image_path"]).read_bytes()
    (tmp_path / "img" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(tmp_path / "img" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # the 60x60 image is over it; the others are not
    bad_rows = [
        {"image_path": "img/none.jpg", "captions": ["manca"]},
        {"image_path": "img/zero.jpg", "captions": ["vuoto"]},
        {"image_path": "img/truncated.jpg", "captions": ["troncato"]},
        {"image_path": "img/bomb.png", "captions": ["bomba"]},
        {"image_path": rows[0]["image_path"], "captions": ["", "  "]},
        {"image_path": rows[0]["image_path"], "captions": [42]},
    ]
    listing = tmp_path / "mixed.jsonl"
    listing.write_text("\n".join(json.dumps(r) for r in rows + bad_rows) + "\n")
    monitor = BadDataMonitor(str(listing), max_bad_fraction=0.5, min_seen=16)
    batches = TrainBatches(stream(str(listing)), 5, lambda t: {"n": np.array([len(t)])}, monitor)
    for _ in range(4):  # 20 good examples = two epochs of 10
        assert len(next(batches)["pixel_values"]) == 5
    assert set(monitor.counts) == {
        "missing_file",
        "empty_file",
        "corrupt_image",
        "decompression_bomb",
        "empty_caption",
        "caption_not_text",
    }
    pixels, _captions, counts = load_eval_examples(str(listing), PROCESSOR)
    assert len(pixels) == 10 and sum(counts.values()) == 6
    strict = TrainBatches(
        stream(str(listing)), 5, lambda t: {}, BadDataMonitor(str(listing), 0.1, min_seen=1)
    )
    with pytest.raises(DataError, match=r"mixed.jsonl are bad .*First failures"):
        for _ in range(10):
            next(strict)


def _old_warning_guard(data, path=""):
    """The guard this project had before (issue 13): PIL's bomb warning made an error with warning filters
    changed inside the decoding thread. Kept here to show the tests below catch its race."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(data)).load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise BadExample("decompression_bomb", str(error)) from None


def _bombs_let_through(decode, bomb, fine, rounds=1000, threads=8):
    """Decode ``[bomb, fine] * rounds`` in ``threads`` threads while another thread keeps changing the warning
    filters (as any library may, and as catch_warnings itself does): how many bombs were not refused."""
    import concurrent.futures
    import sys
    import threading
    import warnings

    stop = threading.Event()

    def meddle():
        while not stop.is_set():
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            warnings.resetwarnings()

    def run(data):
        try:
            decode(data, "x.png")
            return "ok"
        except BadExample as error:
            return error.reason

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that a race has chances to happen
    with warnings.catch_warnings():  # the filters are restored afterwards
        meddler = threading.Thread(target=meddle)
        meddler.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(run, [bomb, fine] * rounds))
        finally:
            stop.set()
            meddler.join()
            sys.setswitchinterval(interval)
    assert results[1::2] == ["ok"] * rounds  # the fine images always decode
    return results[0::2].count("ok")


def test_bomb_guard_does_not_depend_on_warning_filters(monkeypatch):
    """Deterministic: warning filters that another thread set to 'ignore' at the moment of opening (the race
    of issue 13) let the old warning-based guard pass a bomb; the explicit width x height check refuses it."""
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    bomb = encoded(Image.fromarray(np.zeros((50, 50, 3), np.uint8)), "PNG")  # 2500 px: PIL only warns
    original = Image.open

    def open_after_another_thread_reset_the_filters(*args, **kwargs):
        warnings.simplefilter("ignore")
        return original(*args, **kwargs)

    with warnings.catch_warnings():
        monkeypatch.setattr(Image, "open", open_after_another_thread_reset_the_filters)
        _old_warning_guard(bomb)  # passes the bomb: no error
        with pytest.raises(BadExample, match="decompression_bomb.*2500 pixels"):
            decode_image(bomb, "x.png")
        warnings.simplefilter("error")  # and where warnings are errors, a bomb is still a counted skip
        with pytest.raises(BadExample, match="decompression_bomb"):
            decode_image(bomb, "x.png")


def test_bomb_guard_holds_under_concurrent_decoding(monkeypatch):
    """8 decoding threads and a thread changing the warning filters: the old guard lets bombs through (hundreds
    of 1000 here; tried up to three times), the explicit check none."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    bomb = encoded(Image.fromarray(np.zeros((50, 50, 3), np.uint8)), "PNG")  # 2500 px: PIL only warns
    fine = encoded(Image.fromarray(np.zeros((30, 30, 3), np.uint8)), "PNG")
    assert any(_bombs_let_through(_old_warning_guard, bomb, fine) for _ in range(3))  # the race is reproduced
    assert _bombs_let_through(decode_image, bomb, fine) == 0


def test_nothing_valid_is_an_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image_path": "nope.jpg", "captions": ["x"]}) + "\n")
    with pytest.raises(DataError, match="No usable example"):
        load_eval_examples(str(tmp_path / "bad.jsonl"), PROCESSOR)


def test_train_augmentation_and_eval_preprocessing(tmp_path):
    rows = write_images(tmp_path, n=2)
    record = FileSource(str(tmp_path / "train.jsonl"))[1]
    train = ExampleTransform(PROCESSOR, train=True, crop_scale=(0.5, 1.0))
    a = train(record, np.random.default_rng(0))
    b = train(record, np.random.default_rng(0))
    c = train(record, np.random.default_rng(1))
    assert a["pixel_values"].shape == (32, 32, 3)
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
    assert np.abs(a["pixel_values"] - c["pixel_values"]).max() > 0
    evaluation = ExampleTransform(PROCESSOR, train=False)(record, None)
    assert evaluation["captions"] == rows[1]["captions"]
    from clip_jax.data import preprocess_images

    reference = preprocess_images([Image.open(tmp_path / rows[1]["image_path"])], PROCESSOR)[0]
    np.testing.assert_array_equal(evaluation["pixel_values"], reference)


def bad_listing(root, n=12):
    """A listing whose first row lacks its caption key, with a malformed line and a line that is JSON but not an
    object among good rows: (path, number of good rows)."""
    rows = write_images(root, n=n)
    lines = [json.dumps({"image_path": rows[0]["image_path"]})]  # row 1: no caption key
    lines += (
        [json.dumps(r) for r in rows[1:5]]
        + ['{"image_path": "img/001.jpg", "captions": ["tronca"']
        + [json.dumps(r) for r in rows[5:8]]
        + ["[1, 2, 3]"]
        + [json.dumps(r) for r in rows[8:]]
    )
    (root / "bad.jsonl").write_text("\n".join(lines) + "\n")
    return root / "bad.jsonl", n - 1


def test_bad_listing_lines_are_skipped_and_counted_with_file_and_line(tmp_path):
    listing, good = bad_listing(tmp_path)
    source = FileSource(str(listing))
    assert (source.image_key, source.caption_key) == ("image_path", "captions")  # not refused for row 1
    errors = [source[i].get("error") for i in range(len(source))]
    assert [e[0] for e in errors if e] == ["missing_key", "malformed_line", "not_an_object"]
    assert f"{listing}:6" in errors[5][1] and f"{listing}:10" in errors[9][1]  # file and line number
    assert f"{listing}:1: no 'captions'" in errors[0][1]
    monitor = BadDataMonitor(str(listing), max_bad_fraction=0.5, min_seen=16)
    batches = TrainBatches(stream(str(listing)), 1, lambda t: {"n": np.array([len(t)])}, monitor)
    while monitor.seen < 2 * len(source):  # two epochs: the run never crashes on the bad rows
        assert len(next(batches)["pixel_values"]) == 1
    assert set(monitor.counts) == {"missing_key", "malformed_line", "not_an_object"}
    assert min(monitor.counts.values()) >= 2  # once per epoch each
    pixels, _, counts = load_eval_examples(str(listing), PROCESSOR)
    assert len(pixels) == good and counts == {"missing_key": 1, "malformed_line": 1, "not_an_object": 1}


def test_eval_refuses_metrics_on_a_fraction_of_the_data(tmp_path):
    """Keys that change after row 1 leave 1 usable image: no metric is computed on it."""
    rows = write_images(tmp_path, n=10)
    lines = [json.dumps(rows[0])] + [
        json.dumps({"file": r["image_path"], "text": r["captions"]}) for r in rows[1:]
    ]
    (tmp_path / "changed.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"9 of 10 examples .*missing_key.* --max_bad_fraction"):
        load_eval_examples(str(tmp_path / "changed.jsonl"), PROCESSOR, max_bad_fraction=0.1)


def test_trainer_reads_files_source(tmp_path):
    from train_helpers import tiny_config

    from clip_jax.train import train

    write_images(tmp_path / "data", n=40)
    listing, _ = bad_listing(tmp_path / "data", n=40)
    config = tiny_config(tmp_path / "cache", **{"train.phases": ("warmup",)})
    config.data.source = "files"
    config.data.train = str(listing)
    config.data.val = str(tmp_path / "data" / "train.jsonl")
    config.data.val_limit = 16
    config.phases.warmup.steps = 2  # 32 of the 42 rows: the run stops mid-epoch
    summary = train(config, str(tmp_path / "run"))
    assert summary["step"] == 2 and "val/text_retrieval_recall@1" in summary["val"]
    # The skips reach summary.json and metrics.jsonl (hence TensorBoard), by source and reason.
    seen = sum(summary["skipped"]["bad.jsonl"].values())
    assert (
        set(summary["skipped"]["bad.jsonl"]) <= {"missing_key", "malformed_line", "not_an_object"}
        and seen >= 1
    )
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped"] == summary["skipped"]
    last = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in line
    ][-1]
    assert sum(v for k, v in last.items() if k.startswith("data/skipped/bad.jsonl/")) == seen
    from clip_jax.checkpoint import Checkpointer

    meta = Checkpointer(str(tmp_path / "run")).restore_meta(2)
    assert meta["phase"] == "warmup" and "grain" in meta["data"]["stream"]  # the iterator position is saved


@pytest.fixture()
def hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = write_images(tmp_path, n=12)
    data = datasets.Dataset.from_dict(
        {
            "picture": [str(tmp_path / r["image_path"]) for r in rows],
            "texts": [r["captions"] for r in rows],
        }
    ).cast_column("picture", datasets.Image())
    data.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "parquet").mkdir()
    data.to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    return tmp_path, rows


def test_hugging_face_dataset_random_access(hf_dataset):
    root, rows = hf_dataset
    source = parse_source(f"hf:{root / 'saved'}?image=picture&caption=texts")
    assert len(source) == 12 and source[5]["captions"] == rows[5]["captions"]
    assert decode_image(source[5]["image"]).size == Image.open(root / rows[5]["image_path"]).size
    seen = []
    for process in range(2):
        s = stream(f"hf:{root / 'saved'}?image=picture&caption=texts", process, 2)
        seen.append({next(s)["caption"].split()[-1] for _ in range(6)})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {str(i) for i in range(12)}
    with pytest.raises(ValueError, match=r"no column\(s\) \['caption'\]"):
        parse_source(f"hf:{root / 'saved'}?image=picture")


def test_hugging_face_streaming_dataset(hf_dataset):
    root, _rows = hf_dataset
    spec = f"hf:{root / 'parquet'}?image=picture&caption=texts&streaming=1"
    halves = []
    for process in range(2):
        s = stream(spec, process, 2)
        halves.append({next(s)["caption"].split()[-1] for _ in range(6)})
    assert not halves[0] & halves[1] and halves[0] | halves[1] == {str(i) for i in range(12)}
    tokenize = lambda texts: {"n": np.array([len(t) for t in texts])}
    batches = TrainBatches(stream(spec), 4, tokenize, BadDataMonitor(spec))
    next(batches)
    state = json.loads(json.dumps(batches.get_state()))
    expected = [next(batches) for _ in range(4)]  # crosses into the second epoch
    resumed = TrainBatches(stream(spec), 4, tokenize, BadDataMonitor(spec))
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["pixel_values"], want["pixel_values"])
    pixels, _captions, _ = load_eval_examples(spec, PROCESSOR)
    assert len(pixels) == 12


def test_weighted_mixture_of_shards_and_listing_is_deterministic_and_resumable(tmp_path):
    write_images(tmp_path / "a", n=12)
    rows_b = write_images(tmp_path / "b", n=12)
    listing_b = tmp_path / "b" / "train.jsonl"
    listing_b.write_text(
        "\n".join(json.dumps(dict(r, captions=[f"seconda {i}"])) for i, r in enumerate(rows_b))
    )
    shards = "wds:" + convert(str(tmp_path / "a" / "train.jsonl"), str(tmp_path / "s" / "a"), shard_size=4)[0]
    spec = f"{shards}=3,{listing_b}=1"
    drawn = [next(s)["caption"] for s in [stream(spec)] for _ in range(200)]
    assert drawn == [next(s)["caption"] for s in [stream(spec)] for _ in range(200)]  # same seed, same order
    share_b = np.mean([c.startswith("seconda") for c in drawn])
    assert 0.15 < share_b < 0.35  # weights 3:1
    tokenize = lambda texts: {"caption_id": np.array([len(t) for t in texts])}
    batches = TrainBatches(stream(spec), 4, tokenize, BadDataMonitor(spec))
    for _ in range(3):
        next(batches)
    state = json.loads(json.dumps(batches.get_state()))
    expected = [next(batches) for _ in range(3)]
    resumed = TrainBatches(stream(spec), 4, tokenize, BadDataMonitor(spec))
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["pixel_values"], want["pixel_values"])


# ----------------------------------------------------------------------------- the source registry (issue 15)


def test_one_spec_parser_for_every_kind():
    from clip_jax.data.sources import split_spec

    parsed = split_spec("hf:org/data?image=picture&caption=texts&split=validation")
    assert (parsed.kind, parsed.path, parsed.options) == (
        "hf",
        "org/data",
        {"image": "picture", "caption": "texts", "split": "validation"},
    )
    assert split_spec("gs://bucket/coco/train.jsonl").kind == "jsonl"  # a URL's scheme is not a kind
    assert split_spec("/data/shards-{000..009}.tar").kind == "wds"
    assert split_spec("shapes").kind == "shapes" and split_spec("shapes:val").path == "val"
    assert split_spec("xm3600:/data/xm?language=it").options == {"language": "it"}
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['colour'\] .*valid: image, caption"):
        split_spec("hf:org/data?colour=red")
    with pytest.raises(
        ValueError, match="Cannot tell the format of '/data/train.parquet' — prefix it with jsonl:"
    ):
        parse_source("/data/train.parquet")
    with pytest.raises(
        ValueError, match=r"wds: sources give no labelled images; for those use hf:, imagefolder:"
    ):
        parse_source("wds:/data/x.tar", role="labels")


def test_a_new_source_kind_is_one_registry_entry(tmp_path, monkeypatch):
    """A kind registered in data/sources.py alone is read by training streams, eval loading and one-pass caching."""
    from clip_jax.data.sources import SOURCES, SourceKind

    rows = write_images(tmp_path, n=6)

    class Memo:  # random access: len and [i]
        def __init__(self, spec, settings):
            self.rows, self.prefix = rows, spec.option("prefix", "memo")

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            path = str(tmp_path / self.rows[i]["image_path"])
            captions = [f"{self.prefix} {i}"]
            return {"image": Path(path).read_bytes(), "path": path, "captions": captions, "key": path}

    monkeypatch.setitem(SOURCES, "memo", SourceKind("memo", "a test kind", {"captions": Memo}, ("prefix",)))
    spec = "memo:anything?prefix=ricordo"
    s = stream(spec)
    assert sorted(next(s)["caption"] for _ in range(6)) == [f"ricordo {i}" for i in range(6)]
    pixels, captions, counts = load_eval_examples(spec, PROCESSOR)
    assert pixels.shape == (6, 32, 32, 3) and captions[2] == ["ricordo 2"] and counts == {}
    assert sum(len(c) for _, c in process_examples(spec, PROCESSOR, chunk=4)) == 6


def test_source_labels_name_each_source_of_a_mixture():
    from clip_jax.data.sources import source_label

    assert source_label("/data/coco/train.jsonl") == "train.jsonl"
    assert (
        source_label("jsonl:/a/wit.jsonl=0.7,wds:/s/cc-{000..009}.tar=0.3") == "wit.jsonl+cc-{000..009}.tar"
    )
    assert source_label("hf:org/my data?image=x") == "my_data"


def test_shapes_demo_data_is_a_registered_source(tmp_path):
    settings = dict(shapes=dict(num_train=8, num_val=4, image_size=32), cache_dir=str(tmp_path))
    source = parse_source("shapes:val", **settings)
    images, captions = source.arrays()
    assert len(source) == 4 and images.shape == (4, 32, 32, 3)
    record = source[2]
    np.testing.assert_array_equal(np.asarray(decode_image(record["image"])), images[2])  # lossless PNG
    assert record["captions"] == captions[2]
    pixels, eval_captions, _ = load_eval_examples("shapes:val", PROCESSOR, **settings)  # eval reads it too
    assert pixels.shape == (4, 32, 32, 3) and eval_captions == captions
    with pytest.raises(ValueError, match="Unknown shapes split 'test'; use shapes:train, shapes:val"):
        parse_source("shapes:test", **settings)


def _tokenize(texts):
    return {"input_ids": np.array([[len(t)] for t in texts]), "attention_mask": np.ones((len(texts), 1))}


def test_build_training_data_for_the_demo_and_for_files(tmp_path):
    from train_helpers import tiny_config

    from clip_jax.data import EvalSet, build_training_data, cache_examples, preprocess_images
    from clip_jax.data.memory import BatchIterator
    from clip_jax.data.shapes import ShapesSpec, load_or_generate

    config = tiny_config(tmp_path / "cache")
    train, val = build_training_data(config, PROCESSOR, _tokenize)
    assert isinstance(train, BatchIterator) and isinstance(val, EvalSet) and len(val) == 16
    batch = next(train)
    assert batch["pixel_values"].shape == (16, 32, 32, 3) and train.skipped() == {}
    data = load_or_generate(ShapesSpec(**config.data.shapes.to_dict()), config.data.cache_dir)
    np.testing.assert_array_equal(val.pixels, preprocess_images(list(data["val"]["images"]), PROCESSOR))
    chunks = list(cache_examples(config, train, PROCESSOR, 24))
    assert [len(p) for p, _ in chunks] == [24, 24, 16]
    np.testing.assert_array_equal(
        chunks[1][0][0], preprocess_images([data["train"]["images"][24]], PROCESSOR)[0]
    )
    assert chunks[0][1][3] == data["train"]["captions"][3]  # every caption of each example

    rows = write_images(tmp_path / "files", n=20)
    config.data.source, config.data.train = "files", str(tmp_path / "files" / "train.jsonl")
    config.data.val = config.data.train
    config.data.val_limit = 5
    train, val = build_training_data(config, PROCESSOR, _tokenize)
    assert next(train)["pixel_values"].shape == (16, 32, 32, 3) and len(val) == 5
    cached = [c for _, chunk in cache_examples(config, train, PROCESSOR, 8) for c in chunk]
    assert cached == [r["captions"] for r in rows]
    train.close()
    config.data.train = ""
    with pytest.raises(ValueError, match="data.source='files' needs data.train"):
        build_training_data(config, PROCESSOR, _tokenize)
    config.data.source = "tfrecords"
    with pytest.raises(ValueError, match="Unknown data.source 'tfrecords'; choose 'shapes' .* or 'files'"):
        build_training_data(config, PROCESSOR, _tokenize)


def test_skip_counts_are_kept_per_source_of_a_mixture(tmp_path):
    """Issue 13: a mixture's skips are reported under each source's own label, also after a resume."""
    rows = write_images(tmp_path / "a", n=12)
    missing = [dict(r, image_path=f"img/nope{i}.jpg") for i, r in enumerate(rows[:3])]
    first = tmp_path / "a" / "first.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in rows + missing) + "\n")
    second, _ = bad_listing(tmp_path / "b")
    spec = f"{first}=1,{second}=1"
    monitor = BadDataMonitor(spec, max_bad_fraction=0.5)
    batches = TrainBatches(stream(spec), 4, _tokenize, monitor)
    while monitor.seen < 120:
        next(batches)
    skipped = batches.skipped()
    assert set(skipped) == {"first.jsonl", "bad.jsonl"}
    assert set(skipped["first.jsonl"]) == {"missing_file"}
    assert set(skipped["bad.jsonl"]) == {"missing_key", "malformed_line", "not_an_object"}
    assert sum(n for counts in skipped.values() for n in counts.values()) == sum(monitor.counts.values())
    state = json.loads(json.dumps(batches.get_state()))
    resumed = TrainBatches(stream(spec), 4, _tokenize, BadDataMonitor(spec, max_bad_fraction=0.5))
    resumed.set_state(state)
    assert resumed.skipped() == skipped
    old = BadDataMonitor(spec)  # a checkpoint written before per-source counts: one combined label
    old.set_state({"seen": 10, "counts": {"missing_file": 2}})
    assert old.skipped() == {"first.jsonl+bad.jsonl": {"missing_file": 2}}


def test_training_preprocessing_without_augmentation_equals_evaluation(tmp_path):
    """Issue 15 item 6: training and evaluation share CLIP's normalisation; without augmentation they are equal,
    and the augmented path honours do_normalize and crop_width as preprocess_image does."""
    import dataclasses

    write_images(tmp_path, n=4)
    source = FileSource(str(tmp_path / "train.jsonl"))
    rng = np.random.default_rng(0)
    for processor in (PROCESSOR, dataclasses.replace(PROCESSOR, do_normalize=False, crop_width=24)):
        train = ExampleTransform(processor, train=True, augment=False)
        evaluation = ExampleTransform(processor, train=False)
        for i in range(len(source)):
            np.testing.assert_array_equal(
                train(source[i], rng)["pixel_values"], evaluation(source[i], None)["pixel_values"]
            )
    processor = dataclasses.replace(PROCESSOR, do_normalize=False, crop_width=24)
    augmented = ExampleTransform(processor, train=True, crop_scale=(0.5, 1.0))(source[1], rng)["pixel_values"]
    assert augmented.shape == (32, 24, 3)  # crop_height x crop_width
    assert augmented.min() >= 0 and augmented.max() <= 1  # rescaled, not normalised


def test_listing_encodings_gzip_and_mixture_weights(tmp_path):
    """Issue 23: a CSV with a byte-order mark lost its first column; a gzipped listing was unreadable; a
    mixture weight of -1 was read as part of the file name."""
    import gzip

    rows = write_images(tmp_path)
    header_and_rows = "filepath,title\n" + "".join(f"{r['image_path']},{r['captions'][0]}\n" for r in rows)
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + header_and_rows.encode())
    source = parse_source(str(tmp_path / "bom.csv"))
    assert source.image_key == "filepath" and source[0]["image"] is not None
    (tmp_path / "train.jsonl.gz").write_bytes(gzip.compress((tmp_path / "train.jsonl").read_bytes()))
    _, captions, _ = load_eval_examples(str(tmp_path / "train.jsonl.gz"), PROCESSOR)
    assert captions == [r["captions"] for r in rows]
    assert parse_mixture("a.jsonl=0.25,hf:x?split=1,hf:y?split=test=2") == [
        ("a.jsonl", 0.25),
        ("hf:x?split=1", 1.0),
        ("hf:y?split=test", 2.0),
    ]
    for bad in ("a.jsonl=-1", "a.jsonl=0", "a.jsonl=nan"):
        with pytest.raises(ValueError, match=r"mixture weight .* of a.jsonl must be a number > 0 — fix it"):
            parse_mixture(bad)


def test_to_webdataset_skips_an_unidentifiable_image_without_verifying(tmp_path):
    """Issue 23: with --no_verify one bad image stopped the whole conversion."""
    rows = write_images(tmp_path)
    (tmp_path / rows[3]["image_path"]).write_bytes(b"not an image at all")
    _, counts = convert(str(tmp_path / "train.jsonl"), str(tmp_path / "s" / "t"), verify=False)
    assert counts == {"written": len(rows) - 1, "corrupt_image": 1}
