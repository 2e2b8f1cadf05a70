"""Content-addressed blob store on disk: shards are kept by sha256 so restarts and re-deploys cost nothing.

Layout under ``<data_dir>/blobs``::

    sha256/<aa>/<sha256>            complete, verified blobs (read-only by convention)
    partial/<sha256>/<index>.chunk  chunks received so far for an incomplete blob (resumable transfers)

Every write goes to a temporary file and is renamed into place, so a crash never leaves a half-written
blob under its final name. A blob is verified against its sha256 before it becomes visible.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import StoreError

CHUNK_SIZE = 256 * 1024


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_digests(data: bytes, chunk_size: int = CHUNK_SIZE) -> list[str]:
    """sha256 of each ``chunk_size`` slice of ``data`` (at least one chunk, even for empty data)."""
    view = memoryview(data)
    n = max(1, -(-len(data) // chunk_size))
    return [sha256_hex(view[i * chunk_size:(i + 1) * chunk_size]) for i in range(n)]


def _check_sha(sha: str) -> str:
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise StoreError(f"not a sha256 hex digest: {sha!r}")
    return sha


class BlobStore:
    """Blobs by sha256 under ``root``; safe for one writer process per data dir."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ complete blobs
    def path(self, sha: str) -> Path:
        sha = _check_sha(sha)
        return self.root / "sha256" / sha[:2] / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def get(self, sha: str, verify: bool = True) -> bytes:
        """Read a blob; with ``verify`` a blob whose content no longer matches is deleted and reported."""
        p = self.path(sha)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {sha[:12]} is not in the store {self.root}") from None
        if verify and sha256_hex(data) != sha:
            p.unlink(missing_ok=True)
            raise StoreError(f"blob {sha[:12]} in {self.root} is corrupt (sha256 mismatch); removed it")
        return data

    def put(self, data: bytes, expected_sha: str | None = None) -> str:
        """Store ``data``; if ``expected_sha`` is given the data must hash to it."""
        sha = sha256_hex(data)
        if expected_sha is not None and sha != expected_sha:
            raise StoreError(f"blob content hashes to {sha[:12]}, expected {expected_sha[:12]}")
        p = self.path(sha)
        if not p.exists():
            self._atomic_write(p, data)
        return sha

    def list(self) -> list[str]:
        return sorted(p.name for p in (self.root / "sha256").glob("*/*") if p.is_file())

    def remove(self, sha: str) -> None:
        self.path(sha).unlink(missing_ok=True)
        shutil.rmtree(self.root / "partial" / _check_sha(sha), ignore_errors=True)

    # ------------------------------------------------------------------ partial blobs (resumable)
    def _partial_dir(self, sha: str) -> Path:
        return self.root / "partial" / _check_sha(sha)

    def have_chunks(self, sha: str) -> set[int]:
        d = self._partial_dir(sha)
        if not d.is_dir():
            return set()
        out = set()
        for p in d.glob("*.chunk"):
            try:
                out.add(int(p.stem))
            except ValueError:
                p.unlink(missing_ok=True)
        return out

    def put_chunk(self, sha: str, index: int, data: bytes | memoryview, expected_chunk_sha: str) -> None:
        """Keep one verified chunk of an incomplete blob."""
        got = sha256_hex(data)
        if got != expected_chunk_sha:
            raise StoreError(f"chunk {index} of blob {sha[:12]} is corrupt: sha256 {got[:12]}, "
                             f"expected {expected_chunk_sha[:12]}")
        d = self._partial_dir(sha)
        d.mkdir(parents=True, exist_ok=True)
        self._atomic_write(d / f"{index}.chunk", bytes(data))

    def assemble(self, sha: str, n_chunks: int, chunk_shas: list[str] | None = None) -> str:
        """Join chunks 0..n-1 into the blob, verify the whole, and drop the partial directory."""
        d = self._partial_dir(sha)
        parts = []
        for i in range(n_chunks):
            p = d / f"{i}.chunk"
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                raise StoreError(f"blob {sha[:12]}: chunk {i} missing") from None
            if chunk_shas is not None and sha256_hex(data) != chunk_shas[i]:
                p.unlink(missing_ok=True)
                raise StoreError(f"blob {sha[:12]}: stored chunk {i} is corrupt; removed it")
            parts.append(data)
        blob = b"".join(parts)
        if sha256_hex(blob) != sha:
            shutil.rmtree(d, ignore_errors=True)
            raise StoreError(f"blob {sha[:12]}: assembled content does not match its sha256; discarded")
        self.put(blob, sha)
        shutil.rmtree(d, ignore_errors=True)
        return sha

    # ------------------------------------------------------------------ helpers
    def _atomic_write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StoreError(f"cannot write {path}: {exc}") from None
