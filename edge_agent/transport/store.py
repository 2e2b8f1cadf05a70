"""Content-addressed blob store on disk: shards are kept by sha256 so restarts and re-deploys cost nothing.

Layout under ``<data_dir>/blobs``::

    sha256/<aa>/<sha256>            complete, verified blobs (read-only by convention)
    partial/<sha256>.part           an incomplete blob, each chunk written at its offset (resumable)
    partial/<sha256>.idx            the chunks received so far

Every write goes to a temporary file and is renamed into place, so a crashed process never leaves a
half-written blob under its final name. A received blob is made durable (fsync) on a helper thread right
after it is renamed into place (``put`` still syncs before): a power cut in that moment can leave a torn
blob, which the first reader's hash check (below) finds and removes, so it is fetched again.

What is verified against what. A blob stored whole (``put``) is checked against its sha256 first. A blob
received in chunks is checked chunk by chunk against the per-chunk sha256 list of the signed manifest (each
chunk hashed once, as it arrives, or again from disk when a transfer resumes), and its length against the
signed size; when every chunk of it was so verified, ``assemble`` moves it into place without hashing all
its bytes a second time. The signature covers the chunk list and the whole-blob sha256 together, so the
verified chunks are exactly the bytes the operator signed. The whole-blob sha256 is still checked before
the bytes are used: every reader of a complete blob (``get``, which loading a shard calls, and
``BlobServer`` before it serves a blob to a peer) hashes it, and a blob that does not match is removed and
reported. A blob assembled from chunks not all verified in this store object (no chunk list given) is
hashed whole at assembly.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from edge_agent.protocol.errors import StoreError

CHUNK_SIZE = 256 * 1024
WRITEBACK_BYTES = 4 << 20   # a received blob's dirty pages are handed to the disk in steps of this size
_FADVISE = getattr(os, "posix_fadvise", None) if sys.platform.startswith("linux") else None


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
    """Blobs by sha256 under ``root``; safe for one writer (one BlobStore object) per data dir."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        # chunks of each incomplete blob verified against their digests by this object, and the chunk size
        # they were verified at (memory only: after a restart ``have_chunks`` verifies them again)
        self._verified: dict[str, tuple[int, set[int]]] = {}
        self._handles: dict[str, tuple[int, TextIO]] = {}   # open partial file + index per blob being received
        self._dirty: dict[str, tuple[int, int]] = {}   # byte range written since writeback was last started
        self._syncs: list[threading.Thread] = []       # assembled blobs being made durable (_sync_later)
        self.full_rehashes = 0     # assembles that hashed the whole partial file (not every chunk verified)
        for sub in ("sha256", "partial", "tmp"):   # 0700: shards are checked by hash, but are nobody else's
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

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

    def read_range(self, sha: str, offset: int, n: int) -> bytes:
        """``n`` bytes of a complete blob from ``offset`` (unverified: callers verify the blob once, see
        ``BlobServer``); StoreError when it is not in the store."""
        try:
            fd = os.open(self.path(sha), os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(f"blob {sha[:12]} is not in the store {self.root}") from None
        try:
            return os.pread(fd, n, offset)
        finally:
            os.close(fd)

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
        self._drop_partial(sha)

    # ------------------------------------------------------------------ partial blobs (resumable)
    # An incomplete blob is one file written at each chunk's offset (no per-chunk fsync, no second copy)
    # plus an index of the chunks received; on resume the listed chunks are re-verified against the
    # manifest's digests, so a torn write after a crash is fetched again instead of trusted.
    def _part(self, sha: str) -> Path:
        return self.root / "partial" / f"{_check_sha(sha)}.part"

    def _idx(self, sha: str) -> Path:
        return self.root / "partial" / f"{_check_sha(sha)}.idx"

    def have_chunks(self, sha: str, chunk_shas: list[str] | None = None, chunk_size: int | None = None) -> set[int]:
        """Chunks of an incomplete blob already on disk (verified when digests and chunk size are given)."""
        try:
            listed = {int(line) for line in self._idx(sha).read_text().split() if line.isdigit()}
        except FileNotFoundError:
            return set()
        if chunk_shas is None or chunk_size is None:
            return listed
        good = set()
        try:
            with open(self._part(sha), "rb") as f:
                for i in sorted(listed):
                    if i < len(chunk_shas):
                        f.seek(i * chunk_size)
                        if sha256_hex(f.read(chunk_size)) == chunk_shas[i]:
                            good.add(i)
        except FileNotFoundError:
            return set()
        self._verified[sha] = (chunk_size, set(good))
        return good

    def put_chunk(self, sha: str, index: int, data: bytes | memoryview, expected_chunk_sha: str,
                  chunk_size: int) -> None:
        """Keep one chunk of an incomplete blob after checking it against its digest (hashed once here)."""
        got = sha256_hex(data)
        if got != expected_chunk_sha:
            raise StoreError(f"chunk {index} of blob {sha[:12]} is corrupt: sha256 {got[:12]}, "
                             f"expected {expected_chunk_sha[:12]}")
        try:
            fd, idx = self._open_partial(sha)
            offset = index * chunk_size
            os.pwrite(fd, data, offset)
            idx.write(f"{index}\n")
            idx.flush()                # in the page cache: the index survives the process, not a power cut
            self._start_writeback(sha, fd, offset, len(data))
        except OSError as exc:
            raise StoreError(f"cannot write chunk {index} of blob {sha[:12]}: {exc}") from None
        size, verified = self._verified.get(sha, (chunk_size, set()))
        if size != chunk_size:         # another chunking of the same blob: only this one's chunks count
            verified = set()
        verified.add(index)
        self._verified[sha] = (chunk_size, verified)

    def _start_writeback(self, sha: str, fd: int, offset: int, n: int) -> None:
        """Ask the kernel to start writing the chunks received so far to disk, every WRITEBACK_BYTES, without
        waiting: the disk works while the rest arrives, and the fsync before the blob is renamed into place
        (which a crash-safe store needs) finds little left to write instead of the whole blob. Linux starts
        writeback of the dirty range on POSIX_FADV_DONTNEED (and keeps the pages: they are not clean yet)."""
        if _FADVISE is None:
            return
        lo, hi = self._dirty.get(sha, (offset, offset))
        lo, hi = min(lo, offset), max(hi, offset + n)
        if hi - lo < WRITEBACK_BYTES:
            self._dirty[sha] = (lo, hi)
            return
        self._dirty.pop(sha, None)
        _FADVISE(fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)

    def _open_partial(self, sha: str) -> tuple[int, TextIO]:
        """The partial file and index of a blob being received, opened once per transfer (opening both per
        chunk cost more than writing the chunk on a loaded machine)."""
        handles = self._handles.get(sha)
        if handles is None:
            fd = os.open(self._part(sha), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                idx = open(self._idx(sha), "a")  # noqa: SIM115 - kept open until assemble/release
            except OSError:
                os.close(fd)
                raise
            handles = self._handles[sha] = (fd, idx)
        return handles

    def release(self, sha: str) -> None:
        """Close the partial file of a blob no longer being received (the fetcher calls it when a transfer
        ends, finished or not); the received chunks stay on disk for a later resume."""
        handles = self._handles.pop(sha, None)
        self._dirty.pop(sha, None)
        if handles is not None:
            os.close(handles[0])
            handles[1].close()

    def assemble(self, sha: str, n_chunks: int, chunk_shas: list[str] | None = None,
                 chunk_size: int | None = None, size: int | None = None) -> str:
        """Check every chunk arrived and move the blob into place atomically. With the signed chunk list,
        chunk size and blob size, a blob whose every chunk this object verified against that list is not
        hashed again (see the module docstring); otherwise the whole blob is hashed here."""
        have = self.have_chunks(sha)
        missing = [i for i in range(n_chunks) if i not in have]
        if missing:
            raise StoreError(f"blob {sha[:12]}: chunks {missing[:8]} missing")
        part = self._part(sha)
        self.release(sha)
        cs, verified = self._verified.pop(sha, (0, set()))
        by_chunks = (chunk_shas is not None and len(chunk_shas) == n_chunks and size is not None
                     and cs == chunk_size and verified.issuperset(range(n_chunks))
                     and (n_chunks - 1) * cs < max(size, 1) <= n_chunks * cs)
        try:
            with open(part, "rb+") as f:
                if by_chunks:
                    on_disk = os.fstat(f.fileno()).st_size
                    if on_disk != size:   # e.g. bytes appended behind the store's back
                        self._drop_partial(sha)
                        raise StoreError(f"blob {sha[:12]}: assembled {on_disk} bytes, the manifest says {size}; "
                                         "discarded")
                else:
                    self.full_rehashes += 1
                    h = hashlib.sha256()
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                    if h.hexdigest() != sha:
                        self._drop_partial(sha)
                        raise StoreError(f"blob {sha[:12]}: assembled content does not match its sha256; "
                                         "discarded")
        except OSError as exc:
            raise StoreError(f"blob {sha[:12]}: cannot read the received data: {exc}") from None
        dest = self.path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        self._idx(sha).unlink(missing_ok=True)
        self._sync_later(dest)
        return sha

    def _sync_later(self, path: Path) -> None:
        """Make a just-assembled blob durable (file, then its directory entry) on a helper thread instead of
        before the transfer returns: the fsync cost ~50 ms per 64 MiB here even with writeback started early
        (``_start_writeback``). Integrity never depended on it: every reader hashes a blob before using it, so
        a blob torn by a power cut in that moment is found, removed and fetched again (as is a partial file's
        chunk); only a re-fetch is at stake. ``wait_synced`` waits for these (tests, an orderly shutdown)."""
        def sync() -> None:
            try:
                for target in (path, path.parent):
                    fd = os.open(target, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            except OSError:
                pass   # removed meanwhile (a newer deployment pruned it): nothing left to make durable
        t = threading.Thread(target=sync, name="blob-fsync", daemon=True)
        self._syncs = [x for x in self._syncs if x.is_alive()] + [t]
        t.start()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until every assembled blob is durable; False if ``timeout`` ran out first."""
        end = None if timeout is None else time.monotonic() + timeout
        for t in list(self._syncs):
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._syncs)

    def _drop_partial(self, sha: str) -> None:
        self.release(sha)
        self._verified.pop(sha, None)
        self._part(sha).unlink(missing_ok=True)
        self._idx(sha).unlink(missing_ok=True)

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
