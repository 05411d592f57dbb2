"""End to end with real processes: ``dagster dev`` (webserver, daemon, code server, run workers)
on a temporary DAGSTER_HOME holding the shipped ``dagster.yaml``, serving a temporary pipeline set
through ``workspace.yaml``. Nothing but dropping files into the watched directories happens:
the sensors, the run queue, run retries and the runs do the rest.

The pipeline set has two pipelines: ``orders`` (the happy path, checked through the audit table,
the destination, the GraphQL API and a headless-Chromium screenshot saved in ``test-artifacts/``)
and ``crashy``, whose first file write kills its run worker (``FILEDGE_TEST_CRASH_AT=mid_insert``
with the crash-once marker ``FILEDGE_TEST_CRASH_ONCE``), so that Dagster's run retry has to
finish the job. The marker file exists (the crash is disarmed) until the retry test removes it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.support import ROOT, orders_csv, write_pipeline

DAGSTER = str(Path(sys.executable).with_name("dagster"))
CHROMIUM = "/usr/bin/chromium"
INSTALL_CHROMIUM = "apt-get install -y chromium"
ARTIFACTS = ROOT / "test-artifacts"
STARTUP_TIMEOUT_S = 90
LOAD_TIMEOUT_S = 120
PIPELINES = ("orders", "crashy")
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
T = TypeVar("T")

ASSET_QUERY = """
query FiledgeAsset($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions }
      }
    }
    ... on AssetNotFoundError { message }
  }
}
"""

RUNS_QUERY = """
query FiledgeRuns($pipeline: String!) {
  runsOrError(filter: {tags: [{key: "filedge/pipeline", value: $pipeline}]}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, on_timeout: Callable[[], str]) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``on_timeout()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}", pytrace=False)
        time.sleep(0.5)


@dataclass
class DagsterDev:
    root: Path  # the pipeline set's directory
    home: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    crash_marker: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "--- dagster dev log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def incoming(self, pipeline: str) -> Path:
        return self.root / pipeline / "incoming"

    def audit(self, pipeline: str) -> dict[str, dict[str, Any]]:
        """The audit rows of a pipeline by file hash (read-only, while Dagster writes)."""
        db = self.root / "filedge.db"
        if not db.exists():
            return {}
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            conn.row_factory = sqlite3.Row
            try:
                rows = conn.execute("SELECT * FROM etl_file_audit WHERE pipeline = ?", (pipeline,)).fetchall()
            except sqlite3.OperationalError:  # the table does not exist yet
                return {}
        return {row["file_hash"]: dict(row) for row in rows}

    def dest(self, pipeline: str, sql: str) -> list[tuple[Any, ...]]:
        db = self.root / pipeline / "dest.db"
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            return conn.execute(sql).fetchall()

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        assert not payload.get("errors"), payload["errors"]
        return payload["data"]

    def asset(self, pipeline: str) -> dict[str, Any]:
        node = self.graphql(ASSET_QUERY, key={"path": ["filedge", pipeline]})["assetNodeOrError"]
        assert node["__typename"] == "AssetNode", node
        return node

    def runs(self, pipeline: str) -> list[dict[str, Any]]:
        result = self.graphql(RUNS_QUERY, pipeline=pipeline)["runsOrError"]
        assert result["__typename"] == "Runs", result
        return [
            {"id": r["runId"], "status": r["status"], "tags": {t["key"]: t["value"] for t in r["tags"]}}
            for r in result["results"]
        ]

    def wait_runs_finished(self, pipeline: str) -> list[dict[str, Any]]:
        """The pipeline's runs once none is queued or in progress (the audit commit of a file comes
        a moment before the end of its run)."""

        def finished() -> list[dict[str, Any]] | None:
            runs = self.runs(pipeline)
            return runs if runs and all(r["status"] in FINISHED for r in runs) else None

        return wait_for(
            f"the runs of {pipeline!r} to finish", finished, 60, lambda: json.dumps(self.runs(pipeline))
        )

    def wait_committed(self, pipeline: str, count: int) -> dict[str, dict[str, Any]]:
        def done() -> dict[str, dict[str, Any]] | None:
            rows = self.audit(pipeline)
            committed = len(rows) == count and all(r["state"] == "COMMITTED" for r in rows.values())
            return rows if committed else None

        def report() -> str:
            rows = self.audit(pipeline).items()
            states = [(h[:12], r["state"], r["attempts"], r["last_error"]) for h, r in rows]
            return f"audit: {states}\n{self.log_tail()}"

        return wait_for(f"{count} COMMITTED file(s) in pipeline {pipeline!r}", done, LOAD_TIMEOUT_S, report)


def write_pipeline_set(root: Path) -> Path:
    entries = []
    for name in PIPELINES:
        directory = root / name
        (directory / "incoming").mkdir(parents=True)
        # a tiny stale timeout (6 s; heartbeats every 1.5 s): a dead run worker's lease goes soon
        write_pipeline(
            directory,
            name=name,
            dest_table=name,
            stale_timeout_minutes=0.1,
            connector={"type": "sqlite", "url": "sqlite:///dest.db"},
        )
        entries.append(
            {
                "name": name,
                "dir": f"{name}/incoming",
                "config": f"{name}/pipeline.yaml",
                "audit_db_url": "sqlite:///filedge.db",
                "sensor_interval_seconds": 2,
                "run_batch_size": 50,
            }
        )
    path = root / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"pipelines": entries}, sort_keys=False))
    return path


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (dagster dev shuts its services down), then SIGKILL what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    base = tmp_path_factory.mktemp("dagster-e2e")
    home = base / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    root = base / "pipelines"
    set_file = write_pipeline_set(root)
    marker = base / "crash-once.marker"
    marker.touch()  # disarmed until the retry test deletes it
    port = free_port()
    log = base / "dagster-dev.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FILEDGE_PIPELINES": str(set_file),
        "FILEDGE_TEST_CRASH_AT": "mid_insert",
        "FILEDGE_TEST_CRASH_ONCE": str(marker),
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [DAGSTER, "dev", "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole at teardown
        )
    server = DagsterDev(root, home, port, process, log, marker)
    try:

        def up() -> bool:
            if process.poll() is not None:
                message = f"dagster dev exited with {process.returncode}\n{server.log_tail()}"
                pytest.fail(message, pytrace=False)
            try:
                with urllib.request.urlopen(f"{server.url}/server_info", timeout=5) as response:
                    return response.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_for("the Dagster webserver", up, STARTUP_TIMEOUT_S, server.log_tail)
        yield server
    finally:
        stop(process)


def chromium(*args: str, user_data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={user_data_dir}", "--window-size=1400,1000", "--virtual-time-budget=15000",
            *args,
        ],
        text=True, capture_output=True, timeout=120,
    )


def page_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_dropped_files_are_committed_by_the_sensor_and_shown_in_the_ui(
    dev: DagsterDev, tmp_path: Path
) -> None:
    started = time.monotonic()
    for i in range(3):
        (dev.incoming("orders") / f"orders-{i}.csv").write_text(orders_csv(10, start=100 * i))

    rows = dev.wait_committed("orders", 3)
    loaded_s = time.monotonic() - started

    hashes = sorted(rows)
    assert {h: (r["attempts"], r["rows_written"]) for h, r in rows.items()} == dict.fromkeys(hashes, (1, 10))
    assert all(str(r["claimed_by"]).startswith("dagster:") for r in rows.values())
    per_file = dev.dest("orders", "SELECT _filedge_file_hash, COUNT(*) FROM orders GROUP BY 1")
    assert dict(per_file) == dict.fromkeys(hashes, 10)
    assert dev.dest("orders", "SELECT COUNT(DISTINCT order_id) FROM orders") == [(30,)]

    # the webserver reports every file's partition as materialized
    def materialized() -> dict[str, Any] | None:
        node = dev.asset("orders")
        return node if node["partitionStats"]["numMaterialized"] == 3 else None

    node = wait_for("3 materialized partitions", materialized, 30, lambda: json.dumps(dev.asset("orders")))
    stats = node["partitionStats"]
    assert stats == {"numMaterialized": 3, "numPartitions": 3, "numFailed": 0, "numMaterializing": 0}
    statuses = node["assetPartitionStatuses"]
    assert statuses["__typename"] == "DefaultPartitionStatuses"
    assert sorted(statuses["materializedPartitions"]) == hashes
    assert statuses["failedPartitions"] == [] and statuses["materializingPartitions"] == []
    runs = dev.wait_runs_finished("orders")
    assert {r["status"] for r in runs} == {"SUCCESS"}, runs
    assert all(r["tags"].get("dagster/sensor_name") == "filedge_orders_sensor" for r in runs)

    # the asset's page, in a real browser, with one partition selected
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; CI must install it: {INSTALL_CHROMIUM}", pytrace=False)
        pytest.skip(f"{CHROMIUM} not installed ({INSTALL_CHROMIUM}): no screenshot (required in CI)")
    page = f"{dev.url}/assets/filedge/orders?view=partitions&partition={hashes[0]}"
    dom = chromium("--dump-dom", page, user_data_dir=tmp_path / "chromium-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = page_text(dom.stdout)
    assert "Materialized (3)" in text, text[:3000]
    assert all(h in text for h in hashes), text[:3000]
    for key in ("rows_written", "rows_rejected", "dest_table", "attempts", "duration_s"):
        assert key in text, text[:3000]
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dagster-asset-partitions.png"
    screenshot.unlink(missing_ok=True)
    shot = chromium(f"--screenshot={screenshot}", page, user_data_dir=tmp_path / "chromium-shot")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    print(f"files committed {loaded_s:.1f}s after being dropped; screenshot: {screenshot}")


def test_a_run_worker_crash_mid_file_is_retried_by_dagster_and_loads_exactly_once(dev: DagsterDev) -> None:
    dev.crash_marker.unlink()  # arm: the next process to reach mid_insert exits with code 86
    started = time.monotonic()
    (dev.incoming("crashy") / "a.csv").write_text(orders_csv(40, start=1))
    (dev.incoming("crashy") / "b.csv").write_text(orders_csv(40, start=1000))

    rows = dev.wait_committed("crashy", 2)
    loaded_s = time.monotonic() - started

    assert dev.crash_marker.exists(), "no run worker crashed: the test proved nothing"
    hashes = sorted(rows)
    # the crashed file was claimed twice (the crash, then the retry); the other one once
    assert sorted(r["attempts"] for r in rows.values()) == [1, 2]
    assert {h: r["rows_written"] for h, r in rows.items()} == dict.fromkeys(hashes, 40)
    # its rows are there exactly once: the crashed transaction left nothing behind
    per_file = dev.dest("crashy", "SELECT _filedge_file_hash, COUNT(*) FROM crashy GROUP BY 1")
    assert dict(per_file) == dict.fromkeys(hashes, 40)
    assert dev.dest("crashy", "SELECT COUNT(*), COUNT(DISTINCT order_id) FROM crashy") == [(80, 80)]
    ledger = dict(dev.dest("crashy", "SELECT file_hash, row_count FROM _filedge_loads"))
    assert ledger == dict.fromkeys(hashes, 40)

    # Dagster saw the crash as a failed run and re-executed it (run_retries in dagster.yaml)
    runs = dev.wait_runs_finished("crashy")
    failed = [r for r in runs if r["status"] == "FAILURE"]
    assert len(failed) == 1, runs
    retries = [r for r in runs if r["tags"].get("dagster/parent_run_id") == failed[0]["id"]]
    assert [(r["status"], r["tags"].get("dagster/retry_number")) for r in retries] == [("SUCCESS", "1")], runs
    # Between the crash and the retry, a sensor tick may find the lease stale (6 s here), reclaim it
    # and request the file again: a third run is harmless (claims are exclusive) and must succeed.
    assert all(r["status"] == "SUCCESS" for r in runs if r is not failed[0]), runs

    def materialized() -> dict[str, Any] | None:
        node = dev.asset("crashy")
        return node if node["partitionStats"]["numMaterialized"] == 2 else None

    node = wait_for("2 materialized partitions", materialized, 30, lambda: json.dumps(dev.asset("crashy")))
    assert sorted(node["assetPartitionStatuses"]["materializedPartitions"]) == hashes
    assert node["assetPartitionStatuses"]["failedPartitions"] == []
    print(f"crash + retry: both files committed {loaded_s:.1f}s after being dropped")
