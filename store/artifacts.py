"""The artifact store: uploaded datasets, checkpoints and per-item results, in a local directory (default) or
under any fsspec URL (``s3://bucket/prefix`` with the ``s3`` extra).

Keys are built from ids only (``datasets/<tenant>/<dataset>.jsonl``, ``jobs/<job>/...``) and every key is
checked by :meth:`ArtifactStore.resolve`, which refuses anything that would leave the root.
"""

from __future__ import annotations

import hashlib
import posixpath
import queue
import re
import shutil
import tarfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 16
_NAME = re.compile(r"^[a-z0-9_]{1,40}$")


class ArtifactPathError(ValueError):
    """A key or URI points outside the artifact root (or is malformed)."""


class ArtifactStore:
    """Files under one root. ``root_url`` is a directory path (or ``file://`` URL) or an fsspec URL."""

    def __init__(self, root_url: str) -> None:
        self.local = "://" not in root_url or root_url.startswith("file://")
        if self.local:
            self.root = Path(root_url.removeprefix("file://")).resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            self._fs: Any = None
            self._url = ""
        else:
            import fsspec

            self._fs, path = fsspec.core.url_to_fs(root_url)
            self._url = root_url.rstrip("/")
            self.root = Path(path)

    # --- keys, from ids only ---------------------------------------------------------------------------------
    @staticmethod
    def dataset_key(tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> str:
        """Where an uploaded dataset's JSONL file lives."""
        return f"datasets/{uuid.UUID(str(tenant_id))}/{uuid.UUID(str(dataset_id))}.jsonl"

    @staticmethod
    def job_key(job_id: uuid.UUID) -> str:
        """The directory of one job's artifacts."""
        return f"jobs/{uuid.UUID(str(job_id))}"

    @classmethod
    def checkpoint_key(cls, job_id: uuid.UUID, stage: str, kind: str, step: int) -> str:
        """Where a checkpoint snapshot lives (stage and kind are short lowercase names)."""
        for what, value in (("stage", stage), ("kind", kind)):
            if not _NAME.match(value):
                raise ArtifactPathError(f"checkpoint {what} {value!r} must match {_NAME.pattern}")
        return f"{cls.job_key(job_id)}/checkpoints/{stage}-{kind}-{int(step)}"

    @classmethod
    def eval_items_key(cls, job_id: uuid.UUID, evaluation_id: uuid.UUID) -> str:
        """Where an evaluation's per-item results live."""
        return f"{cls.job_key(job_id)}/eval_items/{uuid.UUID(str(evaluation_id))}.jsonl"

    # --- resolution ------------------------------------------------------------------------------------------
    def resolve(self, key: str) -> Path:
        """The absolute location of ``key`` (a path for a local root, the path part of the URL otherwise);
        raises :class:`ArtifactPathError` if it is absolute, has ``..`` parts or would leave the root (also
        through a symbolic link)."""
        if not key or "\x00" in key or key.startswith(("/", "\\")) or "://" in key:
            raise ArtifactPathError(f"artifact key {key!r} must be a relative path inside the artifact root")
        parts = key.replace("\\", "/").split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ArtifactPathError(f"artifact key {key!r} has empty, '.' or '..' parts")
        if not self.local:
            return Path(posixpath.join(str(self.root), *parts))
        path = (self.root / Path(*parts)).resolve()
        if not path.is_relative_to(self.root):
            raise ArtifactPathError(f"artifact key {key!r} resolves outside the artifact root")
        return path

    def _remote(self, key: str) -> str:
        return str(self.resolve(key))

    def exists(self, key: str) -> bool:
        """Whether a file or directory exists at ``key``."""
        return self.resolve(key).exists() if self.local else bool(self._fs.exists(self._remote(key)))

    # --- files -----------------------------------------------------------------------------------------------
    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """A binary file opened for writing at ``key`` (parents created)."""
        if self.local:
            path = self.resolve(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as fh:
                yield fh
        else:
            with self._fs.open(self._remote(key), "wb") as fh:
                yield fh

    @contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        """A binary file opened for reading at ``key``."""
        if self.local:
            with self.resolve(key).open("rb") as fh:
                yield fh
        else:
            with self._fs.open(self._remote(key), "rb") as fh:
                yield fh

    def delete(self, key: str) -> None:
        """Remove the file or directory at ``key`` if it exists."""
        if self.local:
            path = self.resolve(key)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        elif self._fs.exists(self._remote(key)):
            self._fs.rm(self._remote(key), recursive=True)

    def put_dir(self, local_dir: Path, key: str) -> None:
        """Copy a local directory to ``key`` (replacing what was there): a snapshot that later writes to
        ``local_dir`` cannot change."""
        if self.local:
            dest = self.resolve(key)
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(local_dir, dest)
        else:
            self.delete(key)
            self._fs.put(str(local_dir).rstrip("/") + "/", self._remote(key), recursive=True)

    def local_file(self, key: str, cache_dir: Path) -> Path:
        """A local path holding the file at ``key``: the file itself for a local root, else a copy in
        ``cache_dir``."""
        if self.local:
            return self.resolve(key)
        dest = cache_dir / Path(*key.split("/"))
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._fs.get(self._remote(key), str(dest))
        return dest

    def _files(self, key: str) -> list[tuple[str, Path | str]]:
        """(relative name, location) of every file under the directory ``key``, sorted."""
        base = self.resolve(key)
        if self.local:
            if not base.is_dir():
                raise FileNotFoundError(f"artifact {key!r} is missing")
            return sorted(
                (p.relative_to(base).as_posix(), p)
                for p in base.rglob("*")
                if p.is_file() and not p.is_symlink()
            )
        found = self._fs.find(str(base))
        if not found:
            raise FileNotFoundError(f"artifact {key!r} is missing")
        return sorted((posixpath.relpath(f, str(base)), f) for f in found)

    def iter_tar_gz(self, key: str, arcname: str) -> Iterator[bytes]:
        """The directory at ``key`` as a gzip'd tarball under ``arcname/``, produced while it is sent (a writer
        thread feeds a bounded queue), so memory stays small whatever the checkpoint size."""
        files = self._files(key)
        chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
        stop = threading.Event()

        class _Sink:
            def write(self, data: bytes) -> int:
                while not stop.is_set():
                    try:
                        chunks.put(bytes(data), timeout=0.5)
                        return len(data)
                    except queue.Full:
                        continue
                raise BrokenPipeError("download abandoned")

        def produce() -> None:
            try:
                with tarfile.open(fileobj=_Sink(), mode="w|gz", bufsize=CHUNK) as tar:  # type: ignore[call-overload]
                    for rel, loc in files:
                        with self._open_any(loc) as fh:
                            info = tarfile.TarInfo(f"{arcname}/{rel}")
                            info.size = self._size(loc)
                            info.mode = 0o644
                            tar.addfile(info, fh)
                chunks.put(None)
            except BaseException as exc:  # handed to the reader, which re-raises
                if not stop.is_set():
                    chunks.put(exc)

        thread = threading.Thread(target=produce, name="tar-writer", daemon=True)
        thread.start()
        try:
            while True:
                item = chunks.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _open_any(self, loc: Path | str) -> Any:
        return loc.open("rb") if isinstance(loc, Path) else self._fs.open(loc, "rb")

    def _size(self, loc: Path | str) -> int:
        return loc.stat().st_size if isinstance(loc, Path) else int(self._fs.size(loc))


def dir_digest(path: Path) -> tuple[int, str]:
    """(total bytes, sha256) of a directory: the hash covers each file's relative name and content, in sorted
    order, so equal trees hash equal wherever they live."""
    digest = hashlib.sha256()
    total = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
                total += len(block)
    return total, digest.hexdigest()
