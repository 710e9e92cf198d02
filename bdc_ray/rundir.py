"""The run directory: how stages hand over (layout in the README). It lives in run storage
(a local folder, a shared mount or an object store URI, see storage.py); stages work in its
node-local copy, `RunDir.root`."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from .storage import RunStorage, StorageError, atomic_write_bytes, is_uri

_RESULTS_LOCK = threading.Lock()  # results.json is read-modify-written


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    atomic_write_bytes(path, text.encode())


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


class RunDirError(ValueError):
    """A run directory that cannot be one: a file, or a place that cannot be written."""


def check_run_dir(root: str | Path) -> Path | str:
    """Create `root` if needed and prove it writable by writing a file there (an object, for
    a store URI); raise RunDirError naming it otherwise. A job calls this before its first
    stage, so a bad --run-dir is one line, not a traceback after minutes of work that then has
    nowhere to go."""
    if is_uri(root):
        try:
            RunStorage(root).check_writable()
        except StorageError as e:
            raise RunDirError(str(e)) from None
        return str(root)
    path = Path(str(root)[7:] if str(root).startswith("file://") else root)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run dir {path} is a file; give --run-dir a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".bdc-write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunDirError(
            f"run dir {path} cannot be written ({e.strerror or e}); give --run-dir a folder you "
            "can write"
        ) from None
    return path


class RunDir:
    """A run: `storage` where its files live, `root` this node's copy that stages read and
    write (the folder itself for a local or shared one). `synced()` around a stage keeps the
    two alike."""

    def __init__(self, root: str | Path) -> None:
        try:
            self.storage = RunStorage(root)
        except StorageError as e:
            raise RunDirError(str(e)) from None
        self.root = self.storage.local
        self.uri = self.storage.uri

    def where(self, rel: str) -> str:
        """Where a file of the run is for its user: in the store (a URI) or the folder."""
        return f"{self.uri}/{rel}" if self.storage.remote else str(self.root / rel)

    def synced(self):
        """Context manager: the local copy pulled on entry, pushed on exit (also on error)."""
        return self.storage.synced()

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def results(self) -> Path:
        return self.eval / "results.json"

    def samples(self, method: str) -> Path:
        return self.eval / "samples" / f"{method}.jsonl"

    def load_results(self) -> dict[str, Any]:
        if self.results.is_file():
            return json.loads(self.results.read_text())
        return {"methods": {}, "problems": {}}

    def record_method(
        self, method: str, summary: dict[str, Any], per_problem: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """Add (or replace) one method's entry in results.json; other methods are kept (also
        when several threads of one job record methods at once). `versions` names the packages
        of the process that recorded last."""
        from .versions import package_versions

        with _RESULTS_LOCK:
            results = self.load_results()
            results["methods"][method] = summary
            results["versions"] = package_versions()
            for pid, row in per_problem.items():
                results["problems"].setdefault(pid, {})[method] = row
            atomic_write_text(self.results, json.dumps(results, indent=1))
        return results
