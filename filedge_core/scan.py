"""Discovery: which files in a directory are candidates, and their content hash."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from collections.abc import Sequence
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

from .errors import ConfigError

HASH_CHUNK = 1 << 20
# A file changed within this window could change again without its mtime or ctime moving
# (coarse file-system clocks): its stat fingerprint alone does not vouch for its bytes.
SETTLE_NS = 2_000_000_000
_TEMP_SUFFIXES = (".tmp", ".part")

# What must be unchanged for a file's bytes to be taken as unchanged: (size, mtime_ns, ctime_ns, inode).
Fingerprint = tuple[int, int, int, int]


def stat_fingerprint(st: os.stat_result) -> Fingerprint:
    """A file's fingerprint from its stat."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class Candidate(NamedTuple):
    """A regular file directly inside the scanned directory (``location``: its absolute path).

    A named tuple: a scan makes one per file, and 100,000 dataclass instances cost 0.1 s."""

    location: str
    size: int
    mtime_ns: int
    ctime_ns: int = 0
    inode: int = 0

    @property
    def path(self) -> Path:
        return Path(self.location)

    @property
    def name(self) -> str:
        return os.path.basename(self.location)

    @property
    def fingerprint(self) -> Fingerprint:
        """What must be unchanged for a cached hash to be trusted."""
        return self[1:]  # type: ignore[return-value]


def is_ignored(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Hidden and temporary names are never candidates; then ``include``/``exclude`` globs apply."""
    if name.startswith(".") or name.endswith(_TEMP_SUFFIXES):
        return True
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def _entries(directory: str) -> list[tuple[str, str, os.stat_result]]:
    """(name, path, lstat) of every entry that is not hidden or temporary."""
    found = []
    with os.scandir(directory) as listing:
        for entry in listing:
            name = entry.name
            if name[0] == "." or name.endswith(_TEMP_SUFFIXES):
                continue
            try:
                found.append((name, entry.path, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # vanished between listing and stat
    return found


def list_candidates(
    directory: str | os.PathLike[str], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Candidate]:
    """Regular files directly in ``directory`` (symlinks are not followed), sorted by name."""
    directory = os.path.abspath(directory)
    try:
        entries = _entries(directory)
    except FileNotFoundError:
        raise ConfigError(f"{directory}: no such directory") from None
    except NotADirectoryError:
        raise ConfigError(f"{directory}: not a directory") from None
    except PermissionError:
        raise ConfigError(f"{directory}: permission denied") from None
    except OSError as exc:  # e.g. a symlink loop
        raise ConfigError(f"{directory}: cannot list: {exc.strerror or exc}") from None
    found = []
    filtered = bool(include or exclude)
    is_regular = stat.S_ISREG
    for name, path, st in entries:
        if (filtered and is_ignored(name, include, exclude)) or not is_regular(st.st_mode):
            continue
        # Strings, not Paths: a scan of 100,000 files would spend a second building Paths.
        found.append(Candidate(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    found.sort(key=attrgetter("location"))  # one directory: the order of the names
    return found


def hash_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content, read in constant memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
