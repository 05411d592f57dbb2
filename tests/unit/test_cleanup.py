"""``after_commit`` cleanup on real files: only the committed bytes are ever removed, nothing is
ever overwritten, and a producer publishing a new file under the same name mid-cleanup keeps it.
Races are forced by running the producer's step inside cleanup's own re-hash."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from filedge_core import cleanup
from filedge_core.cleanup import check_target, clean_up, recover_private
from filedge_core.config import parse_pipeline
from filedge_core.errors import ConfigError

OLD, NEW = b"order_id,amount\n1,2.5\n", b"order_id,amount\n2,3.5\n"


def config(after_commit: object) -> object:
    return parse_pipeline({
        "dest_table": "orders", "connector": {"type": "sqlite", "url": "sqlite:///o.db"},
        "columns": [{"source": "order_id"}], "after_commit": after_commit,
    })


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(path: Path) -> tuple[cleanup.Fingerprint, int]:
    st = os.lstat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino), time.time_ns()


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_delete_removes_the_committed_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(OLD)
    fingerprint, taken = read(path)
    assert clean_up(config("delete"), str(path), fingerprint, taken, sha(OLD)) == (None, None)
    assert names(tmp_path) == []


def test_a_file_published_under_the_name_before_cleanup_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(OLD)
    fingerprint, taken = read(path)
    (tmp_path / "a.csv.tmp").write_bytes(NEW)
    os.rename(tmp_path / "a.csv.tmp", path)  # the producer's next export
    _, trouble = clean_up(config("delete"), str(path), fingerprint, taken, sha(OLD))
    assert trouble == "not cleaned up (after_commit: delete): changed since it was read"
    assert path.read_bytes() == NEW


def test_a_file_published_while_cleanup_checks_the_old_one_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old file is already out of the way (renamed to a private name) when the producer
    renames its new export into place: the new file is untouched, the old one goes."""
    path = tmp_path / "a.csv"
    path.write_bytes(OLD)
    fingerprint, taken = read(path)
    real_hash = cleanup.hash_file

    def producer_strikes(target: str) -> str:  # right after the check, before the delete
        digest = real_hash(target)
        (tmp_path / "a.csv.tmp").write_bytes(NEW)
        os.rename(tmp_path / "a.csv.tmp", path)
        return digest

    monkeypatch.setattr(cleanup, "hash_file", producer_strikes)  # runs inside the re-hash
    assert clean_up(config("delete"), str(path), fingerprint, taken, sha(OLD)) == (None, None)
    assert names(tmp_path) == ["a.csv"] and path.read_bytes() == NEW


def test_rewritten_in_place_after_the_read_is_put_back(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(OLD)
    fingerprint, taken = read(path)
    # Same size, same mtime (a coarse clock), other bytes: only the re-hash can tell.
    with open(path, "r+b") as handle:
        handle.write(NEW)
    os.utime(path, ns=(fingerprint[1], fingerprint[1]))
    changed = (fingerprint[0], fingerprint[1], os.lstat(path).st_ctime_ns, fingerprint[3])
    _, trouble = clean_up(config("delete"), str(path), changed, taken, sha(OLD))
    assert trouble is not None and "changed since it was read" in trouble
    assert names(tmp_path) == ["a.csv"] and path.read_bytes() == NEW


def test_move_never_overwrites(tmp_path: Path) -> None:
    incoming, archive = tmp_path / "in", tmp_path / "archive"
    incoming.mkdir()
    archive.mkdir()
    (archive / "a.csv").write_bytes(NEW)  # other bytes under the same name
    path = incoming / "a.csv"
    path.write_bytes(OLD)
    fingerprint, taken = read(path)
    moved, trouble = clean_up(config({"move": str(archive)}), str(path), fingerprint, taken, sha(OLD))
    hashed = f"a.{sha(OLD)[:12]}.csv"
    assert (moved, trouble) == (str(archive / hashed), None)
    assert (archive / "a.csv").read_bytes() == NEW and (archive / hashed).read_bytes() == OLD
    # The same bytes again: both names are taken, the hashed one by these very bytes.
    path.write_bytes(OLD)
    fingerprint, taken = read(path)
    clean_up(config({"move": str(archive)}), str(path), fingerprint, taken, sha(OLD))
    assert names(incoming) == [] and names(archive) == sorted(["a.csv", hashed])


@pytest.mark.skipif(
    not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev,
    reason="needs /dev/shm on another file system than /tmp",
)
def test_move_across_file_systems_checks_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = Path(os.environ.get("FILEDGE_TEST_OTHER_FS", "/dev/shm")) / f"filedge-archive-{os.getpid()}"
    try:
        path = tmp_path / "a.csv"
        path.write_bytes(OLD)
        fingerprint, taken = read(path)
        moved, trouble = clean_up(config({"move": str(archive)}), str(path), fingerprint, taken, sha(OLD))
        assert (moved, trouble) == (str(archive / "a.csv"), None)
        assert names(tmp_path) == [] and names(archive) == ["a.csv"] and (archive / "a.csv").read_bytes() == OLD

        # Bytes that are not the committed ones never leave.
        path.write_bytes(NEW)
        fingerprint, taken = read(path)
        moved, trouble = clean_up(config({"move": str(archive)}), str(path), fingerprint, taken, sha(OLD))
        assert moved is None and trouble is not None and "changed since it was read" in trouble
        assert path.read_bytes() == NEW and names(archive) == ["a.csv"]
    finally:
        for leftover in archive.glob("*") if archive.exists() else []:
            leftover.unlink()
        if archive.exists():
            archive.rmdir()


def test_a_crash_mid_cleanup_is_put_back_by_the_next_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / ".a.csv.filedge-cleanup-123-0"
    private.write_bytes(OLD)
    recover_private(tmp_path)
    assert names(tmp_path) == [private.name], "a cleanup in flight elsewhere is left alone"
    monkeypatch.setattr(cleanup, "_ABANDONED_AFTER_S", -1)
    recover_private(tmp_path)
    assert names(tmp_path) == ["a.csv"] and (tmp_path / "a.csv").read_bytes() == OLD


def test_moving_into_the_watched_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is the directory being loaded"):
        check_target(config({"move": str(tmp_path / ".")}), tmp_path)
    check_target(config({"move": str(tmp_path / "archive")}), tmp_path)
    check_target(config("delete"), tmp_path)
