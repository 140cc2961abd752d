"""Crash-safe snapshots: a directory of files plus a JSON sidecar.

Layout of an index directory::

    CURRENT                 # one line: the name of the live snapshot
    snap-000007/
        index.json          # sidecar: metadata + size and sha256 of every file
        label-0000.faiss
        ...

A snapshot is written under a temporary name, fsynced, renamed into place and
only then published by atomically replacing ``CURRENT``. Until that replace
lands, readers (and a restarted process) keep seeing the previous snapshot, so
a crash at any point leaves a loadable index. Older snapshots and leftovers of
interrupted saves are deleted after publishing. One writer per directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from index.base import IndexCorruptError

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
SIDECAR = "index.json"
_SNAP_RE = re.compile(r"^\.?snap-(\d+)(\.tmp)?$")

#: Writes one data file of a snapshot at the given path.
FileWriter = Callable[[Path], None]


def fsync_path(path: Path) -> None:
    """fsync a file or a directory. Directories too: on POSIX a rename or create is only
    durable once the containing directory has been fsynced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _snapshot_numbers(directory: Path) -> list[int]:
    numbers = []
    for entry in directory.iterdir():
        match = _SNAP_RE.match(entry.name)
        if match:
            numbers.append(int(match.group(1)))
    return numbers


def current_snapshot(directory: Path) -> Path | None:
    """The published snapshot directory, or None if nothing was ever published."""
    pointer = directory / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IndexCorruptError(f"cannot read {pointer}: {exc}") from exc
    if not _SNAP_RE.match(name) or name.startswith("."):
        raise IndexCorruptError(f"{pointer} names an invalid snapshot {name!r}")
    return directory / name


def write_snapshot(
    directory: Path,
    files: Mapping[str, FileWriter],
    sidecar: Mapping[str, Any],
    before_publish: Callable[[], None] | None = None,
    after_write: Callable[[], None] | None = None,
) -> Path:
    """Write ``files`` and ``sidecar`` as a new snapshot, publish it, prune old ones.

    ``after_write`` is called as soon as every writer has run, before anything is fsync'd
    or hashed: the caller can let go of what the writers read (the index's lock) there.
    ``before_publish`` is called once the snapshot is complete and fsync'd under its
    temporary name, before the rename: a crash there must leave the previous snapshot
    published (the service's fault-injection tests use it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    number = max(_snapshot_numbers(directory), default=0) + 1
    final = directory / f"snap-{number:06d}"
    tmp = directory / f".snap-{number:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    for name, writer in files.items():
        writer(tmp / name)
    if after_write is not None:
        after_write()
    checksums = {}
    for name in files:
        path = tmp / name
        fsync_path(path)
        checksums[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    meta = {**sidecar, "files": checksums}
    sidecar_path = tmp / SIDECAR
    sidecar_path.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    fsync_path(sidecar_path)
    fsync_path(tmp)
    if before_publish is not None:
        before_publish()

    os.rename(tmp, final)
    fsync_path(directory)
    pointer_tmp = directory / f"{CURRENT}.tmp"
    pointer_tmp.write_text(final.name + "\n", encoding="utf-8")
    fsync_path(pointer_tmp)
    os.replace(pointer_tmp, directory / CURRENT)
    fsync_path(directory)
    logger.info("published index snapshot %s", final)

    _prune(directory, keep=final.name)
    return final


def _prune(directory: Path, keep: str) -> None:
    # Best effort: a failure here costs disk space, never correctness.
    for entry in directory.iterdir():
        if entry.name != keep and _SNAP_RE.match(entry.name):
            try:
                shutil.rmtree(entry)
            except OSError as exc:
                logger.warning("could not delete old snapshot %s: %s", entry, exc)


def open_snapshot(directory: Path) -> tuple[Path, dict[str, Any]]:
    """Locate the published snapshot, parse its sidecar and verify every file."""
    snap = current_snapshot(directory)
    if snap is None:
        raise IndexCorruptError(f"no index snapshot in {directory} ({CURRENT} missing)")
    sidecar_path = snap / SIDECAR
    try:
        meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
        files = meta["files"]
        checks = {name: (int(f["bytes"]), str(f["sha256"])) for name, f in files.items()}
    except FileNotFoundError as exc:
        raise IndexCorruptError(f"snapshot sidecar {sidecar_path} is missing") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexCorruptError(f"snapshot sidecar {sidecar_path} is unreadable: {exc}") from exc
    for name, (size, digest) in checks.items():
        path = snap / name
        if not path.is_file():
            raise IndexCorruptError(f"snapshot file {path} is missing")
        if path.stat().st_size != size or _sha256(path) != digest:
            raise IndexCorruptError(f"snapshot file {path} does not match its checksum")
    return snap, meta
