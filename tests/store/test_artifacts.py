"""The artifact store: keys from ids only, nothing outside the root, snapshots and streamed tarballs."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from twofold.store.artifacts import ArtifactPathError, ArtifactStore, dir_digest


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(os.urandom(200_000))
    return root


@pytest.mark.parametrize(
    "key", ["../x", "/etc/passwd", "a/../../b", "", "a//b", "./a", "s3://bucket/x", "a\x00b", "..", "\\etc"]
)
def test_resolve_refuses_keys_that_could_leave_the_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(ArtifactPathError):
        ArtifactStore(str(tmp_path / "root")).resolve(key)


def test_resolve_refuses_a_symlink_pointing_outside(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    (tmp_path / "secret").mkdir()
    (store.root / "jobs").mkdir()
    (store.root / "jobs" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactPathError, match="outside"):
        store.resolve("jobs/link/file")


def test_keys_are_built_from_ids_only(tmp_path: Path) -> None:
    tenant, dataset, job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert ArtifactStore.dataset_key(tenant, dataset) == f"datasets/{tenant}/{dataset}.jsonl"
    assert ArtifactStore.checkpoint_key(job, "rl", "policy", 3) == f"jobs/{job}/checkpoints/rl-policy-3"
    with pytest.raises(ValueError):
        ArtifactStore.dataset_key("../../etc", dataset)  # type: ignore[arg-type]
    with pytest.raises(ArtifactPathError):
        ArtifactStore.checkpoint_key(job, "../rl", "policy", 3)


def test_a_snapshot_does_not_change_when_the_source_is_rewritten(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    src = _tree(tmp_path / "ckpt")
    before = dir_digest(src)
    store.put_dir(src, "jobs/x/checkpoints/sft-policy-1")
    (src / "sub" / "weights.bin").write_bytes(b"rewritten")
    copy = store.resolve("jobs/x/checkpoints/sft-policy-1")
    assert dir_digest(copy) == before != dir_digest(src)
    assert before[0] == 200_000 + len('{"a": 1}')


def test_tarball_stream_holds_every_file(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    store.put_dir(_tree(tmp_path / "ckpt"), "jobs/x/c")
    blob = b"".join(store.iter_tar_gz("jobs/x/c", arcname="sft-policy-1"))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        weights = tar.extractfile("sft-policy-1/sub/weights.bin")
        assert (
            weights is not None and weights.read() == (tmp_path / "ckpt" / "sub" / "weights.bin").read_bytes()
        )
    assert names == ["sft-policy-1/config.json", "sft-policy-1/sub/weights.bin"]


def test_an_abandoned_download_stops_its_writer_thread(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    src = tmp_path / "big"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))  # incompressible: many chunks
    store.put_dir(src, "jobs/x/big")
    stream = store.iter_tar_gz("jobs/x/big", arcname="big")
    next(stream)
    stream.close()
    deadline = time.monotonic() + 5
    while any(t.name == "tar-writer" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "tar-writer" for t in threading.enumerate())


def test_an_fsspec_root_works_the_same(tmp_path: Path) -> None:
    store = ArtifactStore(f"memory://tf-{uuid.uuid4().hex}")
    with store.open_write("datasets/t/d.jsonl") as fh:
        fh.write(b'{"question": "q"}\n')
    with store.open_read("datasets/t/d.jsonl") as fh:
        assert fh.read() == b'{"question": "q"}\n'
    store.put_dir(_tree(tmp_path / "ckpt"), "jobs/x/c")
    blob = b"".join(store.iter_tar_gz("jobs/x/c", arcname="c"))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["c/config.json", "c/sub/weights.bin"]
    local = store.local_file("datasets/t/d.jsonl", tmp_path / "cache")
    assert local.read_bytes() == b'{"question": "q"}\n'
    with pytest.raises(ArtifactPathError):
        store.resolve("../other-bucket/x")
