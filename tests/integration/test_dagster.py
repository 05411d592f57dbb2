"""The Dagster code location in-process, on a temporary Dagster instance: the discovery sensor, the
partitioned asset over ``process_file``, batching, in-flight runs; and ``dagster definitions
validate`` on ``workspace.yaml`` as a subprocess.

The audit table and the destination are real SQLite files under ``tmp_path``. A sensor tick is
evaluated with ``build_sensor_context`` and its requests applied the way the daemon would: the
partitions added to the instance, each run request executed with the implicit asset job."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from filedge_core.audit import AuditRow
from filedge_dagster.definitions import build_definitions
from filedge_dagster.sensors import PIPELINE_TAG, RANGE_END, RANGE_START
from tests.support import ROOT, Workspace, orders_csv

PIPELINE = "orders"
ASSET = dg.AssetKey(["filedge", PIPELINE])
SENSOR = f"filedge_{PIPELINE}_sensor"
PARTITIONS = f"filedge_{PIPELINE}_files"
DAGSTER = str(Path(sys.executable).with_name("dagster"))
METADATA_KEYS = {
    "path", "rows_written", "rows_rejected", "dest_table", "attempts", "duration_s", "config_hash", "history"
}


def write_pipeline_set(ws: Workspace, **entry: Any) -> Path:
    """A one-pipeline set beside the workspace's pipeline.yaml, audit DB in the workspace."""
    data = {"name": PIPELINE, "dir": "incoming", "config": "pipeline.yaml", "audit_db_url": ws.audit_url}
    data.update(entry)
    path = ws.root / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"pipelines": [data]}, sort_keys=False))
    return path


class Harness:
    """A pipeline set, its Definitions and a temporary instance; does what the daemon would."""

    def __init__(self, ws: Workspace, instance: dg.DagsterInstance, set_file: Path) -> None:
        self.ws = ws
        self.instance = instance
        self.defs = build_definitions(str(set_file))
        self.sensor = self.defs.resolve_sensor_def(SENSOR)
        self.job = self.defs.resolve_implicit_global_asset_job_def()

    def tick(self) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=self.instance, definitions=self.defs, resources=self.defs.resources
        )
        result = self.sensor(context)
        assert isinstance(result, dg.SensorResult)
        return result

    def apply(self, result: dg.SensorResult) -> None:
        """Add the partitions a tick asked for, as the daemon does before launching its runs."""
        for request in result.dynamic_partitions_requests or []:
            assert isinstance(request, dg.AddDynamicPartitionsRequest)
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))

    def execute(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        return self.job.execute_in_process(
            instance=self.instance,
            tags=request.tags,
            asset_selection=request.asset_selection,
            raise_on_error=False,
        )

    def tick_and_run(self) -> tuple[dg.SensorResult, list[dg.ExecuteInProcessResult]]:
        result = self.tick()
        self.apply(result)
        return result, [self.execute(request) for request in result.run_requests or []]

    def partitions(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions(PARTITIONS))

    def range_keys(self, request: dg.RunRequest) -> list[str]:
        """The partition keys a range run request covers, in the partitions' order."""
        keys = self.partitions()
        start, end = keys.index(request.tags[RANGE_START]), keys.index(request.tags[RANGE_END])
        return keys[start : end + 1]

    def materializations(self, run_id: str) -> dict[str, list[dict[str, Any]]]:
        """The asset's materializations recorded by one run: partition -> [metadata values]."""
        records = self.instance.fetch_materializations(ASSET, limit=10_000).records
        out: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            if record.run_id != run_id:
                continue
            materialization = record.asset_materialization
            assert materialization is not None and materialization.partition is not None
            metadata = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
            out.setdefault(materialization.partition, []).append(metadata)
        return out

    def audit_rows(self) -> dict[str, AuditRow]:
        audit = self.ws.audit()
        try:
            return audit.rows_for(PIPELINE, self.partitions())
        finally:
            audit.dispose()

    def statuses(self) -> dict[str, Any]:
        status = self.instance.get_status_by_partition(
            ASSET, self.partitions(), dg.DynamicPartitionsDefinition(name=PARTITIONS)
        )
        assert status is not None
        return dict(status)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "pipeline"
    root.mkdir()
    return Workspace(root)


@pytest.fixture
def harness(ws: Workspace, instance: dg.DagsterInstance) -> Harness:
    return Harness(ws, instance, write_pipeline_set(ws))


def step_failure_description(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1, [e.event_type_value for e in result.all_events]
    data = failures[0].step_failure_data
    assert data is not None and data.user_failure_data is not None, "expected a dagster Failure"
    return data.user_failure_data.description or ""


def ledger_tokens(ws: Workspace) -> dict[str, int]:
    return dict(ws.query("SELECT file_hash, claim_token FROM _filedge_loads"))


# -- (a) a tick registers files and requests runs; the runs commit them ---------------------------


def test_sensor_tick_registers_files_and_the_range_run_commits_them(harness: Harness, ws: Workspace) -> None:
    for i in range(3):
        ws.add(f"orders-{i}.csv", orders_csv(4, start=100 * i))

    result = harness.tick()

    # one add-partitions request with the three content hashes, registered PENDING in the audit
    assert len(result.dynamic_partitions_requests) == 1
    add = result.dynamic_partitions_requests[0]
    assert isinstance(add, dg.AddDynamicPartitionsRequest) and add.partitions_def_name == PARTITIONS
    keys = list(add.partition_keys)
    assert len(keys) == 3 and all(len(k) == 64 for k in keys)
    audit = ws.audit()
    try:
        states = {h: r.state for h, r in audit.rows_for(PIPELINE, keys).items()}
        assert states == dict.fromkeys(keys, "PENDING")
    finally:
        audit.dispose()
    # one range run over the three partitions, tagged with the pipeline
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.asset_selection == [ASSET]
    assert request.tags[PIPELINE_TAG] == PIPELINE
    assert (request.tags[RANGE_START], request.tags[RANGE_END]) == (keys[0], keys[-1])

    harness.apply(result)
    assert harness.partitions() == keys
    run = harness.execute(request)

    assert run.success
    rows = harness.audit_rows()
    assert {h: r.state for h, r in rows.items()} == dict.fromkeys(keys, "COMMITTED")
    assert {h: (r.attempts, r.rows_written) for h, r in rows.items()} == dict.fromkeys(keys, (1, 4))
    assert ws.rows_per_hash() == dict.fromkeys(keys, 4)
    assert sorted(ws.query("SELECT order_id, amount FROM orders")) == sorted(
        (str(i), i + 0.5) for start in (0, 100, 200) for i in range(start, start + 4)
    )
    # exactly one materialization per partition, with the file's metadata
    materializations = harness.materializations(run.run_id)
    assert sorted(materializations) == sorted(keys)
    for key, events in materializations.items():
        assert len(events) == 1
        metadata = events[0]
        assert METADATA_KEYS <= set(metadata)
        assert Path(metadata["path"]) == Path(rows[key].path)
        assert (metadata["rows_written"], metadata["rows_rejected"]) == (4, 0)
        assert (metadata["dest_table"], metadata["attempts"]) == ("orders", 1)
        assert isinstance(metadata["duration_s"], float) and metadata["duration_s"] >= 0
        # the audit row's config hash and its attempt history, as `filedge show` prints them
        assert metadata["config_hash"] == rows[key].config_hash and len(metadata["config_hash"]) == 64
        history = metadata["history"].strip("`\n").splitlines()
        assert history[0] == "history:      1 attempt(s)"
        assert history[1].startswith("  token 1  ") and "  committed  " in history[1] and "rows=4" in history[1]
        assert f"dagster:{run.run_id[:8]}:" in history[1]
    assert set(harness.statuses().values()) == {dg.AssetPartitionStatus.MATERIALIZED}


# -- (b) nothing left to do; re-running a committed partition is a no-op -------------------------


def test_second_tick_requests_nothing_and_rerunning_a_committed_partition_is_a_noop(
    harness: Harness, ws: Workspace
) -> None:
    ws.add("a.csv", orders_csv(5, start=1))
    ws.add("b.csv", orders_csv(5, start=10))
    _, runs = harness.tick_and_run()
    assert [r.success for r in runs] == [True]

    again = harness.tick()
    assert list(again.run_requests or []) == []
    assert list(again.dynamic_partitions_requests or []) == []

    key = harness.partitions()[0]
    rows_before = sorted(ws.dest_rows())
    tokens_before = ledger_tokens(ws)
    audit_before = harness.audit_rows()[key]

    rerun = harness.job.execute_in_process(
        instance=harness.instance, partition_key=key, asset_selection=[ASSET], raise_on_error=False
    )

    assert rerun.success
    assert sorted(ws.dest_rows()) == rows_before
    assert ledger_tokens(ws) == tokens_before
    audit_after = harness.audit_rows()[key]
    assert (audit_after.state, audit_after.attempts, audit_after.claim_token, audit_after.committed_at) == (
        "COMMITTED",
        audit_before.attempts,
        audit_before.claim_token,
        audit_before.committed_at,
    )
    events = harness.materializations(rerun.run_id)
    assert list(events) == [key]
    assert events[key][0]["outcome"] == "already_committed"
    assert events[key][0]["rows_written"] == 5


# -- (c) a data error fails its partition only ----------------------------------------------------


def test_data_error_fails_its_partition_and_the_rest_of_the_range_commits(
    harness: Harness, ws: Workspace
) -> None:
    ws.add("a.csv", orders_csv(3, start=1))
    ws.add("b-bad.csv", "order_id,amount\n7,7.5\n8,abc\n")
    ws.add("c.csv", orders_csv(3, start=20))

    result, runs = harness.tick_and_run()

    assert len(result.run_requests) == 1 and len(runs) == 1  # the bad file sits inside the range
    run = runs[0]
    assert not run.success
    assert run.dagster_run.status == dg.DagsterRunStatus.FAILURE
    rows = harness.audit_rows()
    bad = next(h for h, r in rows.items() if r.path.endswith("b-bad.csv"))
    good = sorted(h for h in rows if h != bad)
    assert len(good) == 2

    # the step's Failure names the file, the row, the column and the value
    description = step_failure_description(run)
    assert "1 of 3 file(s) not loaded" in description
    assert bad[:12] in description and "b-bad.csv" in description
    assert "row 2" in description and "'amount'" in description and "'abc'" in description
    # a data error is terminal: no step retry, one attempt charged
    assert not [e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert (rows[bad].state, rows[bad].error_kind, rows[bad].attempts) == ("FAILED", "data", 1)
    assert "'abc'" in (rows[bad].last_error or "")
    # the other files of the range committed and were reported
    assert {h: rows[h].state for h in good} == dict.fromkeys(good, "COMMITTED")
    assert ws.rows_per_hash() == dict.fromkeys(good, 3)
    materializations = harness.materializations(run.dagster_run.run_id)
    assert sorted(materializations) == good
    assert all(len(events) == 1 and events[0]["rows_written"] == 3 for events in materializations.values())
    statuses = harness.statuses()
    assert statuses[bad] == dg.AssetPartitionStatus.FAILED
    assert {statuses[h] for h in good} == {dg.AssetPartitionStatus.MATERIALIZED}

    # the failed file is not requested again (it needs `filedge requeue`)
    assert list(harness.tick().run_requests or []) == []


def test_quarantined_rows_show_in_the_materialization(ws: Workspace, instance: dg.DagsterInstance) -> None:
    ws.configure(on_error="quarantine")
    harness = Harness(ws, instance, write_pipeline_set(ws))
    ws.add("mixed.csv", "order_id,amount\n7,7.5\n8,abc\n9,9.5\n")

    _, runs = harness.tick_and_run()

    assert len(runs) == 1 and runs[0].success
    (events,) = harness.materializations(runs[0].dagster_run.run_id).values()
    assert (events[0]["rows_written"], events[0]["rows_rejected"]) == (2, 1)
    assert events[0]["note"] == "1 row(s) quarantined in orders_rejected"
    assert ws.query("SELECT line_number, column_name, raw_value, reason FROM orders_rejected") == [
        (3, "amount", "abc", "not a valid float")
    ]


def test_after_commit_moves_files_from_the_asset_and_the_sensor(ws: Workspace, instance: dg.DagsterInstance) -> None:
    """The asset cleans up each file it commits; a later tick cleans up the same bytes dropped
    in again (they are COMMITTED already, so no run is requested for them)."""
    ws.configure(after_commit={"move": "archive"})
    harness = Harness(ws, instance, write_pipeline_set(ws))
    ws.add("a.csv", orders_csv(2))
    _, runs = harness.tick_and_run()
    assert len(runs) == 1 and runs[0].success
    archive = ws.root / "archive"
    assert sorted(p.name for p in ws.incoming.iterdir()) == []
    assert sorted(p.name for p in archive.iterdir()) == ["a.csv"]
    (events,) = harness.materializations(runs[0].dagster_run.run_id).values()
    assert events[0]["path"] == str(archive / "a.csv")

    ws.add("again.csv", orders_csv(2))
    result, runs = harness.tick_and_run()
    assert runs == [] and not result.run_requests
    assert sorted(p.name for p in archive.iterdir()) == ["a.csv", "again.csv"]
    assert sum(ws.rows_per_hash().values()) == 2


# -- (d) many files: few runs ------------------------------------------------------------------------


def test_a_thousand_files_are_batched_into_few_range_runs(
    ws: Workspace, instance: dg.DagsterInstance
) -> None:
    batch = 300
    harness = Harness(ws, instance, write_pipeline_set(ws, run_batch_size=batch))
    for i in range(1000):
        ws.add(f"f{i:04d}.csv", orders_csv(1, start=i))

    result = harness.tick()
    harness.apply(result)

    keys = harness.partitions()
    assert len(keys) == 1000
    requests = list(result.run_requests)
    assert len(requests) == 4  # ceil(1000 / 300)
    covered = [harness.range_keys(r) for r in requests]
    assert all(len(c) <= batch for c in covered)
    assert [k for c in covered for k in c] == keys  # every file once, in order, no overlap
    assert all(r.tags[PIPELINE_TAG] == PIPELINE for r in requests)

    # the smallest range runs as ONE run reporting one materialization per file
    smallest = min(requests, key=lambda r: len(harness.range_keys(r)))
    run = harness.execute(smallest)
    assert run.success
    materializations = harness.materializations(run.run_id)
    assert sorted(materializations) == sorted(harness.range_keys(smallest))
    assert len(materializations) == 100
    assert all(len(events) == 1 for events in materializations.values())
    rows = harness.audit_rows()
    assert sum(r.state == "COMMITTED" for r in rows.values()) == 100

    # the next tick asks only for the files still to load, batched the same way
    later = list(harness.tick().run_requests)
    assert [len(harness.range_keys(r)) for r in later] == [batch, batch, batch]


# -- (e) in-flight runs ------------------------------------------------------------------------------


def _remote_origin() -> Any:
    """A minimal remote job origin: Dagster requires one on runs stored as QUEUED (the daemon gets
    it from the workspace). Private API, used only to fake a queued run record."""
    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )

    repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("filedge"), "__repository__")
    return RemoteJobOrigin(repository, "__ASSET_JOB")


@pytest.mark.parametrize(
    "status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
)
def test_files_of_an_in_flight_run_are_not_requested_again(
    harness: Harness, ws: Workspace, status: dg.DagsterRunStatus
) -> None:
    ws.add("a.csv", orders_csv(2, start=1))
    ws.add("b.csv", orders_csv(2, start=10))
    first = harness.tick()
    harness.apply(first)
    (request,) = first.run_requests
    in_flight = set(harness.range_keys(request))
    # the run the daemon launched for that request, not finished yet
    run = harness.instance.create_run_for_job(
        job_def=harness.job,
        tags=request.tags,
        status=status,
        asset_selection=set(request.asset_selection),
        remote_job_origin=_remote_origin() if status == dg.DagsterRunStatus.QUEUED else None,
    )
    assert harness.instance.get_run_by_id(run.run_id).status == status  # type: ignore[union-attr]
    ws.add("c.csv", orders_csv(2, start=20))

    second = harness.tick()

    # only the new file is requested; the two files of the in-flight run are left to it
    harness.apply(second)
    new_key = next(k for k in harness.partitions() if k not in in_flight)
    assert [harness.range_keys(r) for r in second.run_requests] == [[new_key]]

    # once that run is over (here: it failed before touching them), they are requested again
    harness.instance.report_run_failed(run)
    third = harness.tick()
    requested = sorted(k for r in third.run_requests for k in harness.range_keys(r))
    assert requested == sorted(in_flight | {new_key})


def test_a_single_partition_run_in_flight_also_counts(harness: Harness, ws: Workspace) -> None:
    ws.add("a.csv", orders_csv(2, start=1))
    harness.apply(harness.tick())
    (key,) = harness.partitions()
    harness.instance.create_run_for_job(
        job_def=harness.job,
        tags={PIPELINE_TAG: PIPELINE, "dagster/partition": key},
        status=dg.DagsterRunStatus.STARTED,
        asset_selection={ASSET},
    )
    assert list(harness.tick().run_requests or []) == []


# -- the CLI validates the code location ---------------------------------------------------------------


def _validate(set_file: Path, home: Path) -> subprocess.CompletedProcess[str]:
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "FILEDGE_PIPELINES": str(set_file), "DAGSTER_HOME": str(home)}
    return subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, text=True, capture_output=True, timeout=180,
    )


def test_dagster_definitions_validate_passes_on_workspace_yaml(ws: Workspace, tmp_path: Path) -> None:
    proc = _validate(write_pipeline_set(ws), tmp_path / "home")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All code locations passed validation" in proc.stdout + proc.stderr


def test_dagster_definitions_validate_reports_a_broken_pipeline_set(ws: Workspace, tmp_path: Path) -> None:
    set_file = write_pipeline_set(ws, config="missing.yaml")
    proc = _validate(set_file, tmp_path / "home")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "missing.yaml: no such file" in proc.stdout + proc.stderr
