"""``after_commit``: what happens to a source file once its content is COMMITTED.

Cleanup runs only after the audit commit, and only on a file that still holds the committed
bytes: its stat fingerprint (size, mtime, ctime, inode) must be the one it had when it was read
or hashed, and a file changed within the last two seconds (a coarse file-system clock could hide
a rewrite) is hashed again first. A crash between the commit and the cleanup is harmless: the
next scan finds the file, sees its content COMMITTED and cleans it up then. Cleanup never
touches the audit state; a file that cannot be cleaned up is a warning and stays where it is."""

from __future__ import annotations

import errno
import os
import shutil
import time

from .config import PipelineConfig
from .scan import hash_file

Fingerprint = tuple[int, int, int, int]

# As the scan's stat cache: within this window a rewrite may not move mtime/ctime.
_SETTLE_NS = 2_000_000_000


def fingerprint_of(path: str) -> Fingerprint | None:
    """(size, mtime_ns, ctime_ns, inode) of ``path`` (not following symlinks); None if gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _unchanged(path: str, fingerprint: Fingerprint, file_hash: str) -> bool:
    if fingerprint_of(path) != fingerprint:
        return False
    if max(fingerprint[1], fingerprint[2]) >= time.time_ns() - _SETTLE_NS:
        try:
            return hash_file(path) == file_hash
        except OSError:
            return False
    return True


def clean_up(config: PipelineConfig, path: str, fingerprint: Fingerprint, file_hash: str) -> tuple[str | None, str | None]:
    """Apply ``after_commit`` to one file whose content is COMMITTED.

    Returns ``(new_path, warning)``: where the file is now (None if deleted or kept) and what
    went wrong, if anything (the file then stays where it is)."""
    action = config.after_commit
    if action.action == "keep":
        return None, None
    if not _unchanged(path, fingerprint, file_hash):
        return None, f"{path}: not cleaned up (after_commit: {action.action}): changed since it was read"
    try:
        if action.action == "delete":
            os.unlink(path)
            return None, None
        assert action.directory is not None
        return _move(path, action.directory, file_hash), None
    except FileNotFoundError:
        return None, None  # someone else cleaned it up
    except OSError as exc:
        return None, f"{path}: not cleaned up (after_commit: {action.action}): {exc.strerror or exc}"


def _target(directory: str, name: str, file_hash: str) -> str:
    """``directory/name``, or ``name`` with the short hash before its suffix if that is taken by
    other bytes (the same bytes may be replaced: they are the same file)."""
    target = os.path.join(directory, name)
    if not os.path.lexists(target):
        return target
    stem, dot, suffix = name.partition(".")
    return os.path.join(directory, f"{stem}.{file_hash[:12]}{dot}{suffix}")


def _move(path: str, directory: str, file_hash: str) -> str:
    os.makedirs(directory, exist_ok=True)
    target = _target(directory, os.path.basename(path), file_hash)
    try:
        os.rename(path, target)
        return target
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # Another file system: copy under a hidden name, make it durable, rename into place, and
    # only then remove the source. A crash leaves at worst a hidden temp file and the source.
    partial = os.path.join(directory, f".{os.path.basename(target)}.filedge-partial")
    shutil.copy2(path, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.rename(partial, target)
    os.unlink(path)
    return target


__all__ = ["Fingerprint", "clean_up", "fingerprint_of"]
