"""A run whose --workdir is a gs:// bucket: checkpoints (orbax through tensorstore's GCS driver),
config, model files, metrics and TensorBoard events all land in the bucket; the run resumes from it
after a preemption and is exported / evaluated from it. The bucket is a real GCS JSON-API server
(gcp-storage-emulator, tests/gcs_server.py) on localhost; gcsfs, tensorstore and google-cloud-storage talk to it over HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()
URL = f"http://127.0.0.1:{PORT}"
# Read at import time by gcsfs and at first use by tensorstore, so set before either is used.
os.environ.update(
    STORAGE_EMULATOR_HOST=URL,
    TENSORSTORE_GCS_HTTP_URL=URL,
    GOOGLE_AUTH_TOKEN_FOR_TESTING="test",
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
)
pytest.importorskip("gcsfs", reason="remote workdirs need the [gcs] extra (gcsfs)")
pytest.importorskip("gcp_storage_emulator", reason="the test bucket needs gcp-storage-emulator (test extra)")

from train_helpers import losses, tiny_config  # noqa: E402

from clip_jax import load_model  # noqa: E402
from clip_jax.train import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    log = open(tmp_path_factory.mktemp("gcs") / "server.log", "w+")  # noqa: SIM115  # a file, not a pipe nobody drains
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("gcs_server.py")), str(PORT), "clip-jax-test"],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        log.seek(0)
        pytest.fail(f"GCS emulator did not start: {log.read()}")
    import gcsfs

    yield "gs://clip-jax-test", gcsfs.GCSFileSystem(token="anon")
    server.terminate()
    server.wait(10)
    log.close()


def test_run_in_a_gcs_bucket_resumes_and_is_evaluated_from_it(tmp_path, bucket):
    root, fs = bucket
    reference = Trainer(tiny_config(tmp_path / "cache"), str(tmp_path / "reference"))
    reference.run()

    workdir = f"{root}/runs/it"
    first = Trainer(tiny_config(tmp_path / "cache"), workdir)
    write = first.logger.write

    def write_then_preempt(step, metrics):  # a real SIGTERM in the middle of phase 2
        write(step, metrics)
        if step == 4 and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    first.logger.write = write_then_preempt
    assert first.run()["preempted"]
    assert fs.exists("clip-jax-test/runs/it/checkpoints/4")
    summary = Trainer(tiny_config(tmp_path / "cache"), workdir).run()
    assert summary["step"] == 6 and not summary["preempted"]

    names = {path.split("/runs/it/", 1)[1] for path in fs.find("clip-jax-test/runs/it")}
    assert {"config.json", "model/config.json", "model/preprocessor_config.json", "metrics.jsonl"} <= names
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in names)
    assert any(n.startswith("checkpoints/6/") for n in names)

    local_metrics = tmp_path / "remote_metrics"
    local_metrics.mkdir()
    fs.get_file("clip-jax-test/runs/it/metrics.jsonl", str(local_metrics / "metrics.jsonl"))
    expected, got = losses(tmp_path / "reference"), losses(local_metrics)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step

    # Export / evaluation read the model straight from the bucket.
    remote_model = load_model(workdir)
    local_model = load_model(str(tmp_path / "reference"))
    pixels = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(remote_model.encode_image(pixels)), np.asarray(local_model.encode_image(pixels)), atol=1e-5
    )
    config = json.loads(fs.cat_file("clip-jax-test/runs/it/config.json"))
    assert config["train"]["batch_size"] == 16


def test_listings_and_shards_are_read_from_the_bucket(tmp_path, bucket):
    """Data sources through fsspec: a JSONL listing with relative image paths and WebDataset shards in gs://."""
    from test_data import PROCESSOR, write_images

    from clip_jax.data.pipeline import ExampleStream, ExampleTransform, load_eval_examples
    from clip_jax.data.to_webdataset import convert

    root, fs = bucket
    write_images(tmp_path / "data")
    convert(str(tmp_path / "data" / "train.jsonl"), str(tmp_path / "data" / "shards" / "t"), shard_size=5)
    fs.put(str(tmp_path / "data"), "clip-jax-test/data", recursive=True)
    for local, remote in (
        (f"jsonl:{tmp_path}/data/train.jsonl", f"jsonl:{root}/data/train.jsonl"),
        (
            f"wds:{tmp_path}/data/shards/t-{{00000..00002}}.tar",
            f"wds:{root}/data/shards/t-{{00000..00002}}.tar",
        ),
    ):
        pixels, captions, skipped = load_eval_examples(remote, PROCESSOR)
        expected_pixels, expected_captions, _ = load_eval_examples(local, PROCESSOR)
        assert captions == expected_captions and not skipped
        np.testing.assert_array_equal(pixels, expected_pixels)
        streams = [
            ExampleStream(spec, ExampleTransform(PROCESSOR, train=True), workers=2)
            for spec in (local, remote)
        ]
        for _ in range(14):  # past the first epoch
            a, b = (next(s) for s in streams)
            assert a["caption"] == b["caption"]
            np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])


def test_a_second_run_on_a_bucket_workdir_is_refused_and_the_lock_write_is_create_only(bucket):
    from clip_jax.workdir import WorkdirInUse, WorkdirLock, create_text

    root, _ = bucket
    workdir = f"{root}/locked-run"
    first = WorkdirLock(workdir).acquire()
    with pytest.raises(WorkdirInUse, match="in use by another run"):
        WorkdirLock(workdir).acquire()
    # The write itself refuses an existing object (what makes two racing runs safe on real GCS).
    with pytest.raises(FileExistsError):
        create_text(f"{workdir}/lock", "someone else\n")
    first.release()
    WorkdirLock(workdir).acquire().release()  # released: the next run gets it
