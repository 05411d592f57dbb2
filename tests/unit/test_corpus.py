"""The corpus of real-world files in tests/data/corpus: each case directory holds one file, its
`case.yaml` (pipeline keys: columns, format, csv options, on_error) and either `expected.json`
(the rows, as JSON values; with `on_error: quarantine` also `expected_rejects.json`: row,
line, column, raw value, reason) or `expected_error.txt` (the data error, exactly)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
import yaml

from filedge_core.batches import FileBatches
from filedge_core.config import parse_pipeline
from filedge_core.errors import DataError
from filedge_core.source import snapshot_of
from tests.support import ROOT

CORPUS = ROOT / "tests" / "data" / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())
EXPECTATIONS = ("expected.json", "expected_error.txt", "expected_rejects.json")


def read(data: bytes, config, batch_bytes: int | None) -> tuple[list[list[object]], list[list[object]]]:
    """The rows and the rejects of a file."""
    rows: list[list[object]] = []
    rejects: list[list[object]] = []
    for batch in FileBatches(snapshot_of(data), config, batch_bytes):
        rows.extend([_plain(v) for v in row] for row in batch.frame.rows())
        rejects.extend(list(row) for row in batch.rejects.rows())
    return rows, rejects


def test_corpus_is_there() -> None:
    assert len(CASES) >= 20


def _plain(value: object) -> object:
    """Values as JSON spells them: decimals as numbers, dates and datetimes in ISO 8601."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


@pytest.mark.parametrize("batch_bytes", [None, 1, 16])
@pytest.mark.parametrize("name", CASES)
def test_case(name: str, batch_bytes: int | None) -> None:
    """Each case read whole, and in batches of a record or two (line numbers must not move)."""
    case = CORPUS / name
    spec = yaml.safe_load((case / "case.yaml").read_text(encoding="utf-8"))
    config = parse_pipeline(
        {"dest_table": "t", "connector": {"type": "sqlite", "url": "sqlite:///unused.db"}, **spec}, "case.yaml", case
    )
    (data_file,) = [p for p in case.iterdir() if p.name not in ("case.yaml", *EXPECTATIONS)]
    data = data_file.read_bytes()
    error_file = case / "expected_error.txt"
    if error_file.exists():
        with pytest.raises(DataError) as info:
            read(data, config, batch_bytes)
        assert str(info.value) == error_file.read_text(encoding="utf-8").strip()
        return
    rows, rejects = read(data, config, batch_bytes)
    assert rows == json.loads((case / "expected.json").read_text(encoding="utf-8"))
    rejects_file = case / "expected_rejects.json"
    expected_rejects = json.loads(rejects_file.read_text(encoding="utf-8")) if rejects_file.exists() else []
    assert rejects == expected_rejects
