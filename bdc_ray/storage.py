"""Run storage: where a run's files live, and the node-local copy stages work in.

A run directory is a local folder (also one on a shared mount, NFS or EFS, which every node
sees as it is) or a URI of any filesystem pyarrow or fsspec knows: ``s3://bucket/run``,
``gs://...``, ``hdfs://...``, ``memory://...``. Object stores take their endpoint and
credentials from the usual places (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, instance profiles)
or from the URI's query (pyarrow's ``?endpoint_override=...&scheme=http``).

Stages read and write files in a node-local copy of the run (``local``, in the project cache;
for a local folder, the folder itself) and `RunStorage` keeps the two alike: `pull` fetches
what changed in the store since this copy last saw it, `push` uploads what changed here and
removes from the store what was removed here. Each object is written whole or not at all (a
local file through a temporary name and a rename; an object store's upload becomes visible
only when it completes), so a reader never sees half a file. Names with a component that
starts with a dot are never copied: temporary files, and the folders Ray Train and Tune write
into the store themselves (`ray_storage`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

_MANIFEST = ".bdc-sync.json"
_BUCKETS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")  # the path's first part is a bucket
_OBJECT_STORES = ("s3", "gcs", "abfs")  # pyarrow's type names of stores without real folders
_CHUNK = 8 << 20
# more than an object store's whole-second modification times and the clock skew between a
# node and the store
_FRESH_NS = 5_000_000_000


class StorageError(ValueError):
    """A run URI that names no filesystem, or a store that cannot be reached or written."""


def is_uri(spec: str | os.PathLike) -> bool:
    """A scheme other than file:// (a Windows drive letter is not one)."""
    scheme = urlsplit(str(spec)).scheme
    return len(scheme) > 1 and scheme != "file"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI: pyarrow's own filesystems first (S3, GCS, HDFS,
    Azure), any fsspec implementation otherwise."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except ValueError as e:  # pyarrow's ArrowInvalid: a scheme it does not know
        arrow_error = e
    except OSError as e:
        raise StorageError(f"run storage {uri}: {e}") from None
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:
        raise StorageError(
            f"run storage {uri}: no filesystem for it (pyarrow: {arrow_error}; fsspec: {e}); "
            "give a local folder or a URI pyarrow or fsspec knows (s3://, gs://, hdfs://, ...)"
        ) from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.digest()


def _unchanged(seen: list[int], st: os.stat_result, stamp: list[int]) -> bool:
    """The local file is the copy this node made of the object, and the object is the version
    it saw. Object stores keep modification times in whole seconds, so a version seen within
    _FRESH_NS of its write may have been replaced in the same second by one of the same size:
    such a one is fetched again (and kept as it is if its bytes did not change)."""
    if len(seen) < 5 or seen[:2] != [st.st_size, st.st_mtime_ns] or seen[2:4] != stamp:
        return False
    return seen[4] - stamp[1] > _FRESH_NS


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


class RunStorage:
    """One run's store and this node's copy of it (see the module's docstring)."""

    def __init__(self, spec: str | os.PathLike, cache: str | os.PathLike | None = None) -> None:
        spec = str(spec)
        self.remote = is_uri(spec)
        if not self.remote:
            path = Path(spec[7:] if spec.startswith("file://") else spec)
            self.uri = str(path)
            self.fs, self.base = pafs.LocalFileSystem(), str(path.resolve())
            self.local = path
            return
        self.uri = spec.rstrip("/")
        self.fs, self.base = resolve(self.uri)
        bucket_only = urlsplit(spec).scheme in _BUCKETS and "/" not in self.base.strip("/")
        if bucket_only or not self.base.strip("/"):
            raise StorageError(f"run storage {spec}: name a folder in the bucket, not its root")
        if cache is None:
            from .llm.models import cache_dir

            cache = cache_dir() / "runs"
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.local = Path(cache) / digest
        self._lock = threading.Lock()  # stages record results from several threads

    # -- the store itself ------------------------------------------------------------------

    def store_path(self, rel: str) -> str:
        return f"{self.base}/{rel}".rstrip("/") if rel else self.base

    def ray_storage(self, rel: str) -> tuple[str, pafs.FileSystem | None]:
        """`storage_path` and `storage_filesystem` for Ray Train or Tune: their checkpoints go
        into the store directly (not through the local copy), so any node can resume them."""
        if not self.remote:
            return str((self.local / rel).resolve()), None
        return self.store_path(rel), self.fs

    def exists(self, rel: str) -> bool:
        """A file of the run in the store (the folder itself, for a local one)."""
        return self.fs.get_file_info(self.store_path(rel)).type == pafs.FileType.File

    def check_writable(self) -> None:
        """Write and remove a probe object; StorageError naming the store otherwise."""
        probe = self.store_path(f".bdc-write-check.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            self.fs.create_dir(self.base, recursive=True)
            with self.fs.open_output_stream(probe) as out:
                out.write(b"ok")
            self.fs.delete_file(probe)
        except (OSError, ValueError) as e:
            text = str(e)
            hint = ""
            if any(w in text for w in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId",
                                       "SignatureDoesNotMatch", "credentials")):  # fmt: skip
                hint = (" (the credentials were refused or missing: AWS_ACCESS_KEY_ID/"
                        "AWS_PROFILE, the node's instance profile, or the URI's query)")  # fmt: skip
            elif any(w in text for w in ("NETWORK_CONNECTION", "connect", "resolve host")):
                hint = " (the endpoint cannot be reached: AWS_ENDPOINT_URL or the URI's query)"
            raise StorageError(f"run storage {self.uri} cannot be written: {text}{hint}") from None

    def _remote_files(self, prefix: str = "") -> dict[str, pafs.FileInfo]:
        if prefix:
            one = self.fs.get_file_info(self.store_path(prefix))
            if one.type == pafs.FileType.File:  # a single file named
                return {prefix: one}
        sel = pafs.FileSelector(self.store_path(prefix), recursive=True, allow_not_found=True)
        out = {}
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(self.base) :].lstrip("/")
            if rel and not _hidden(rel):
                out[rel] = info
        return out

    def _remote_stamp(self, rel: str) -> list[int]:
        info = self.fs.get_file_info(self.store_path(rel))
        return [info.size or 0, info.mtime_ns or 0]

    # -- the node-local copy ---------------------------------------------------------------

    def _local_files(self) -> dict[str, os.stat_result]:
        out = {}
        if not self.local.is_dir():
            return out
        for dirpath, dirs, files in os.walk(self.local):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                p = os.path.join(dirpath, name)
                out[os.path.relpath(p, self.local).replace(os.sep, "/")] = os.stat(p)
        return out

    def _manifest(self) -> dict[str, list[int]]:
        """rel -> [size, local mtime_ns, store size, store mtime_ns, seen_ns] as of the last
        copy; seen_ns: when this node saw that version of the object (its clock)."""
        try:
            return json.loads((self.local / _MANIFEST).read_text())
        except (OSError, ValueError):
            return {}

    def _save_manifest(self, manifest: dict[str, list[int]]) -> None:
        self.local.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{_MANIFEST}.", dir=self.local)
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh)
        os.replace(tmp, self.local / _MANIFEST)

    def _download(self, rel: str) -> int:
        """Fetch one object through a temporary file; a copy with the same bytes is kept as it
        is (its modification time is what tells a stage its outputs did not change). Returns 1
        if the local file changed."""
        target = self.local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, self.fs.open_input_stream(self.store_path(rel)) as f:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
            if target.is_file() and _sha256(target) == digest.digest():
                return 0
            os.replace(tmp, target)
            return 1
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @property
    def spec(self) -> str:
        """What a worker on any node passes to RunStorage to reach this run: the URI, or the
        folder's absolute path (a worker's working directory is not the driver's)."""
        return self.uri if self.remote else str(self.local.resolve())

    def write_bytes(self, rel: str, data: bytes) -> None:
        """One file straight into the store (a worker's output), whole or not at all."""
        if self.remote:
            self._upload(rel, iter((data,)))
            return
        atomic_write_bytes(self.local / rel, data)

    def _upload(self, rel: str, chunks: Iterator[bytes] | None = None) -> None:
        """Into a dot-named temporary object, then moved to its name (a rename here, a copy on
        an object store): the object appears whole or not at all, also when the upload fails
        half-way (a stream closed after an error would otherwise complete what it had)."""
        final = self.store_path(rel)
        parent, name = final.rsplit("/", 1)
        tmp = f"{parent}/.{name}.{os.urandom(6).hex()}.part"
        if self.fs.type_name not in _OBJECT_STORES:  # an object store has no folders to make
            self.fs.create_dir(parent, recursive=True)
        moved = False
        try:
            with self.fs.open_output_stream(tmp) as out:
                for chunk in chunks if chunks is not None else _chunks(self.local / rel):
                    out.write(chunk)
            self.fs.move(tmp, final)
            moved = True
        finally:
            if not moved:
                try:
                    self.fs.delete_file(tmp)
                except (FileNotFoundError, OSError):
                    pass  # never written

    def pull(self, prefix: str = "") -> int:
        """Fetch what changed in the store since this copy last saw it (only `prefix`, if
        given: one expert's folder, or one file); files removed from the store go here too, unless
        changed here since. Returns the number of files fetched."""
        if not self.remote:
            return 0
        prefix = prefix.strip("/")

        def under(rel: str) -> bool:
            return not prefix or rel == prefix or rel.startswith(prefix + "/")

        with self._lock:
            manifest, fetched = self._manifest(), 0
            remote = self._remote_files(prefix)
            local = {k: v for k, v in self._local_files().items() if under(k)}
            mine = {k: v for k, v in manifest.items() if under(k)}
            for rel, info in remote.items():
                seen, st = manifest.get(rel), local.get(rel)
                stamp = [info.size or 0, info.mtime_ns or 0]
                if seen and st and _unchanged(seen, st, stamp):
                    continue
                fetched += self._download(rel)
                st = os.stat(self.local / rel)
                manifest[rel] = [st.st_size, st.st_mtime_ns, *stamp, time.time_ns()]
            for rel in [r for r in mine if r not in remote]:
                st = local.get(rel)
                if st and manifest[rel][:2] == [st.st_size, st.st_mtime_ns]:
                    os.unlink(self.local / rel)
                del manifest[rel]
            self._save_manifest(manifest)
            return fetched

    def push(self) -> int:
        """Upload what changed here since the last copy, remove from the store what was
        removed here. Returns the number of files uploaded."""
        if not self.remote:
            return 0
        with self._lock:
            manifest, sent = self._manifest(), 0
            local = self._local_files()
            try:
                for rel, st in sorted(local.items()):
                    seen = manifest.get(rel)
                    if seen and seen[:2] == [st.st_size, st.st_mtime_ns]:
                        continue
                    self._upload(rel)
                    stamp = self._remote_stamp(rel)
                    manifest[rel] = [st.st_size, st.st_mtime_ns, *stamp, time.time_ns()]
                    sent += 1
                for rel in [r for r in manifest if r not in local]:
                    try:
                        self.fs.delete_file(self.store_path(rel))
                    except FileNotFoundError:
                        pass
                    del manifest[rel]
            finally:
                self._save_manifest(manifest)  # what did go up is not sent again
            return sent

    def put_dir(self, rel: str, folder: str | os.PathLike, last: str | None = None) -> None:
        """A folder made elsewhere (a worker's adapter) into the store under `rel`, replacing
        what was there: each file whole, `last` after all the others, then the folder's old
        files that the new one lacks removed."""
        folder = Path(folder)
        names = sorted(
            str(p.relative_to(folder)).replace(os.sep, "/")
            for p in folder.rglob("*")
            if p.is_file()
        )
        names.sort(key=lambda n: n == last)
        for name in names:
            self._upload(f"{rel}/{name}", _chunks(folder / name))
        sel = pafs.FileSelector(self.store_path(rel), recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(sel):
            name = info.path[len(self.store_path(rel)) :].lstrip("/")
            if info.type == pafs.FileType.File and name not in names:
                self.fs.delete_file(info.path)

    def delete_dir(self, rel: str) -> None:
        """Remove a folder of the store (a finished Ray Train run's checkpoints)."""
        try:
            self.fs.delete_dir(self.store_path(rel))
        except (FileNotFoundError, OSError):
            pass

    @contextmanager
    def synced(self) -> Iterator[RunStorage]:
        """The local copy up to date on entry; what was made in it in the store on exit, also
        when the block fails (the traces of a search that died are not lost)."""
        self.pull()
        try:
            yield self
        finally:
            self.push()

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri, "local": str(self.local), "remote": self.remote}
