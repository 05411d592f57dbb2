"""``after_commit``: what happens to a source file once its content is COMMITTED.

Cleanup runs only after the audit commit, only on a file whose audit row says COMMITTED, and
only on the committed bytes:

1. The file is first renamed to a private hidden name in the same directory (atomic; hidden
   names are never candidates). A producer that publishes a new file under the same name
   afterwards (write ``name.tmp``, rename into place) is not touched.
2. The inode now held privately must have the stat fingerprint (size, mtime, ctime, inode) it
   had when it was read or hashed; if it was modified within two seconds of that moment (a
   coarse file-system clock could hide a rewrite), it is hashed again.
3. Only then is it deleted or moved. A move never overwrites anything: it links the file under
   its name in the archive (or ``name.<hash12>.suffix`` if the name is taken); across file
   systems the copy is hashed as it is written and checked before the source goes.

A file that fails a check is put back under its name (or, if a new file took the name meanwhile,
under ``name.<hash12>.suffix``, so that it is scanned and loaded like any new content) with a
warning. A crash between the commit and the cleanup is harmless: the next scan finds the file,
its content COMMITTED, and cleans it up then (a crash inside the cleanup leaves a hidden
``.name.filedge-…`` file, which the next cleanup of that directory puts back). Cleanup never
changes the audit state."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import time

from .config import PipelineConfig
from .errors import ConfigError
from .scan import HASH_CHUNK, SETTLE_NS, Fingerprint, hash_file, stat_fingerprint

_PRIVATE = ".filedge-cleanup-"
_ABANDONED_AFTER_S = 60
_serial = itertools.count()


def check_target(config: PipelineConfig, directory: str | os.PathLike[str]) -> None:
    """``after_commit: move`` must not point at the watched directory itself (each scan would
    move the files again)."""
    target = config.after_commit.directory
    if target is not None and os.path.realpath(target) == os.path.realpath(directory):
        raise ConfigError(f"after_commit.move: {target} is the directory being loaded; choose another directory")


def clean_up(
    config: PipelineConfig, path: str, fingerprint: Fingerprint, taken_ns: int, file_hash: str
) -> tuple[str | None, str | None]:
    """Apply ``after_commit`` to one file whose content is COMMITTED. ``fingerprint`` is the
    file's stat when it was read or hashed, ``taken_ns`` when that was (``time.time_ns()``).

    Returns ``(new_path, trouble)``: where the file is now (None if deleted, kept or gone) and
    what went wrong, if anything, without the path (the file then stays, under its name)."""
    action = config.after_commit.action
    if action == "keep":
        return None, None
    directory, name = os.path.split(path)
    private = os.path.join(directory, f".{name}{_PRIVATE}{os.getpid()}-{next(_serial)}")
    try:
        if stat_fingerprint(os.lstat(path)) != fingerprint:
            return None, _trouble(action, "changed since it was read")
        os.rename(path, private)
    except FileNotFoundError:
        return None, None  # gone already (another worker's cleanup, or the producer)
    except OSError as exc:
        return None, _trouble(action, exc.strerror or str(exc))
    try:
        if not _holds(private, fingerprint, taken_ns, file_hash):
            put_back = _put_back(private, path)
            return None, _trouble(action, f"changed since it was read; left as {put_back}")
        if action == "delete":
            os.unlink(private)
            return None, None
        assert config.after_commit.directory is not None
        return _move(private, name, config.after_commit.directory, file_hash), None
    except OSError as exc:
        if os.path.lexists(private):
            _put_back(private, path)
        return None, _trouble(action, exc.strerror or str(exc))


def _trouble(action: str, why: str) -> str:
    return f"not cleaned up (after_commit: {action}): {why}"


def _holds(private: str, fingerprint: Fingerprint, taken_ns: int, file_hash: str) -> bool:
    """Whether the file just renamed to ``private`` is the inode that was read (checked with
    its full fingerprint under its name just before), with the bytes that were committed. The
    rename itself moves ctime, so here the inode, size and mtime are compared."""
    st = os.lstat(private)
    if (st.st_size, st.st_mtime_ns, st.st_ino) != (fingerprint[0], fingerprint[1], fingerprint[3]):
        return False
    if max(fingerprint[1], fingerprint[2]) >= taken_ns - SETTLE_NS:
        return hash_file(private) == file_hash
    return True


def _hashed_name(name: str, file_hash: str) -> str:
    stem, dot, suffix = name.partition(".")
    return f"{stem}.{file_hash[:12]}{dot}{suffix}"


def _link_without_overwrite(source: str, directory: str, name: str, file_hash: str) -> str | None:
    """Link ``source`` as ``directory/name``, else ``name.<hash12>.suffix``; None if that one
    exists too (it holds these very bytes: only this function gives out such names)."""
    for candidate in (name, _hashed_name(name, file_hash)):
        target = os.path.join(directory, candidate)
        try:
            os.link(source, target)
            return target
        except FileExistsError:
            continue
    return None


def _put_back(private: str, path: str) -> str:
    """Make a private file visible again, under its name or, if a new file took that name, a
    name with the short hash of its own bytes (which it holds, if that exists already)."""
    directory, name = os.path.split(path)
    own_hash = hash_file(private)
    target = _link_without_overwrite(private, directory, name, own_hash)
    os.unlink(private)
    return target or os.path.join(directory, _hashed_name(name, own_hash))


def _move(private: str, name: str, directory: str, file_hash: str) -> str:
    os.makedirs(directory, exist_ok=True)
    try:
        target = _link_without_overwrite(private, directory, name, file_hash)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        target = _copy_across(private, name, directory, file_hash)
    os.unlink(private)
    return target or os.path.join(directory, _hashed_name(name, file_hash))


def _copy_across(private: str, name: str, directory: str, file_hash: str) -> str | None:
    """Another file system (or no hard links): copy under a hidden name, hashing the bytes as
    they are written, make them durable, then link them into place."""
    partial = os.path.join(directory, f".{name}{_PRIVATE}{os.getpid()}-{next(_serial)}")
    digest = hashlib.sha256()
    try:
        with open(private, "rb") as source, open(partial, "xb") as copy:
            while piece := source.read(HASH_CHUNK):
                digest.update(piece)
                copy.write(piece)
            copy.flush()
            os.fsync(copy.fileno())
        if digest.hexdigest() != file_hash:
            raise OSError(errno.EIO, "the copy does not hold the committed bytes")
        target = _link_without_overwrite(partial, directory, name, file_hash)
        _fsync_directory(directory)
        return target
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_private(directory: str | os.PathLike[str]) -> None:
    """Put back the files a crash left under a private cleanup name in ``directory``: each goes
    back under its name (or a hashed one), so the next scan sees it (and, its content being
    COMMITTED, cleans it up properly)."""
    try:
        entries = [e for e in os.scandir(directory) if _PRIVATE in e.name and e.name.startswith(".")]
    except OSError:
        return
    settled_before = time.time() - _ABANDONED_AFTER_S  # not one another worker is cleaning up now
    for entry in entries:
        name = entry.name[1:].split(_PRIVATE, 1)[0]
        try:
            if entry.stat(follow_symlinks=False).st_ctime < settled_before:
                _put_back(entry.path, os.path.join(os.fspath(directory), name))
        except OSError:
            continue


__all__ = ["Fingerprint", "check_target", "clean_up", "recover_private"]
