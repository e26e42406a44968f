"""The one batching loop (embed_rows) and the process-split computation (shared_rows)."""

import json
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import REPO, subprocess_env

from clip_jax.embedding import bucket_size, embed_rows
from clip_jax.sharding import batch_sharding, make_mesh


@pytest.mark.parametrize("bucket", [False, True])
def test_embed_rows_returns_every_real_row_in_order_over_uneven_chunks(bucket):
    mesh = make_mesh({"data": 4, "fsdp": 2})
    shapes = []

    @jax.jit
    def double_plus_mask(x, mask):
        return 2 * x + mask[:, :1]

    def fn(x, mask):
        shapes.append(x.shape[0])
        assert x.sharding.is_equivalent_to(batch_sharding(mesh), x.ndim)  # split over the batch devices
        return double_plus_mask(x, mask)

    rng = np.random.default_rng(0)
    chunks = [(rng.normal(size=(n, 3)).astype(np.float32), np.ones((n, 5), np.int32)) for n in (5, 11, 1, 20)]
    out = embed_rows(fn, chunks, batch_size=16, mesh=mesh, bucket=bucket)
    expected = np.concatenate([2 * x + 1 for x, _ in chunks])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert sum(shapes) >= 37 and all(s % 8 == 0 for s in shapes)
    # 37 rows in batches of 16: two full batches, then 5 rows padded to the bucket (8) or to the batch (16)
    assert shapes == [16, 16, 8 if bucket else 16]


def test_bucket_sizes_are_powers_of_two_rounded_to_the_devices():
    assert [bucket_size(n, 64, 1) for n in (1, 3, 5, 64, 65)] == [1, 4, 8, 64, 65]
    assert [bucket_size(n, 64, 8) for n in (1, 9, 33)] == [8, 16, 64]


def test_embed_rows_pads_with_a_real_row_so_masks_never_go_empty():
    mesh = make_mesh({"data": 8})
    seen = []

    def fn(mask):
        seen.append(np.asarray(mask))
        return jnp.sum(mask, axis=1, keepdims=True)

    embed_rows(fn, [(np.array([[1, 1, 0]] * 3, np.int32),)], batch_size=8, mesh=mesh)
    assert (seen[0].sum(axis=1) > 0).all()  # the 5 padding rows copy a real row


SHARED = """
import json
import sys
import jax
import numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2, process_id=int(sys.argv[1]))
from clip_jax.embedding import shared_rows
items = list(range(7))
out = shared_rows(lambda part: np.array([[x * 10, jax.process_index(), len(part)] for x in part]), items)
print("ROWS", json.dumps(out.tolist()))
"""


def test_shared_rows_splits_the_work_and_every_process_gets_all_rows(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "shared.py"
    script.write_text(SHARED.format(port=port))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i)],
            env=subprocess_env(1),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    rows = []
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        rows.append(json.loads(next(line for line in out.splitlines() if line.startswith("ROWS"))[5:]))
    assert rows[0] == rows[1]  # every process has every row, in order
    assert [r[0] for r in rows[0]] == [10 * x for x in range(7)]
    assert [r[1] for r in rows[0]] == [i % 2 for i in range(7)]  # row i computed by process i % 2 only
    assert [r[2] for r in rows[0]] == [4 if i % 2 == 0 else 3 for i in range(7)]  # each saw only its share
