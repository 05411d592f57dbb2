"""A known password in every connection URL never appears in anything filedge prints or
stores: every command's output (success and failure), the audit table, the destination's
ledger and rejects, and a Dagster run's metadata."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from tests.support import Workspace, filedge, orders_csv

PASSWORD = "s3cret-Hunter2-pw"


def with_password(url: str, password: str = PASSWORD) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':', 1)[0]}:{password}@{host}"


@pytest.fixture
def secret_url(pg_database: str) -> str:
    """The test database's URL with a password (the test server trusts 127.0.0.1, so any works)."""
    return with_password(pg_database)


def dump_database(url: str) -> str:
    """Every row of every table of the database, as text."""
    out = []
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            out.extend(str(row) for row in conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall())
    return "\n".join(out)


def test_no_output_or_table_holds_the_password(tmp_path: Path, secret_url: str) -> None:
    ws = Workspace(tmp_path, audit_url=secret_url, dest_url=secret_url)
    ws.configure(on_error="quarantine")
    ws.add("good.csv", orders_csv(3))
    ws.add("mixed.csv", "order_id,amount\n7,7.5\n8,abc\n")
    ws.add("bad.csv", "order_id,amount\n1\n")
    good = hashlib.sha256(orders_csv(3).encode()).hexdigest()
    host = secret_url.split("@", 1)[1].rsplit("/", 1)[0]
    wrong_db = with_password(f"postgresql://postgres@{host}/no_such_database")
    closed_port = with_password("postgresql://postgres@127.0.0.1:1/db")

    outputs: list[subprocess.CompletedProcess[str]] = [
        filedge("validate", "--config", str(ws.config_path)),
        filedge("validate", "--config", str(ws.config_path), "--dir", str(ws.incoming)),
        ws.run(),
        ws.run("--workers", "2"),
        filedge("status", "--audit-db-url", secret_url),
        filedge("status", "--json", "--audit-db-url", secret_url),
        filedge("list", "--audit-db-url", secret_url),
        filedge("list", "--json", "--audit-db-url", secret_url),
        filedge("requeue", "--all", "--audit-db-url", secret_url),
        filedge("show", good[:8], "--audit-db-url", secret_url),
        filedge("show", good[:8], "--config", str(ws.config_path), "--audit-db-url", secret_url),
        filedge("show", good[:8], "--json", "--config", str(ws.config_path), "--audit-db-url", secret_url),
        filedge("prune", "--older-than", "0", "--dry-run", "--audit-db-url", secret_url),
        filedge("status", "--audit-db-url", wrong_db),
        filedge("status", "--audit-db-url", closed_port),
        filedge("list", "--audit-db-url", closed_port),
        filedge("verify", "--config", str(ws.config_path), "--audit-db-url", secret_url),
        filedge("verify", "--config", str(ws.config_path), "--audit-db-url", secret_url, "--json", "--fix"),
        filedge("verify", "--config", str(ws.config_path), "--audit-db-url", closed_port),
    ]
    ws.configure(on_error="quarantine", connector={"type": "postgresql", "url": wrong_db})
    outputs.append(ws.run())
    outputs.append(filedge("validate", "--config", str(ws.config_path)))
    outputs.append(filedge("verify", "--config", str(ws.config_path), "--audit-db-url", secret_url))
    ws.configure(on_error="quarantine", connector={"type": "postgresql", "url": closed_port, "connect_retry_seconds": 0.5})
    outputs.append(ws.run())

    assert any(o.returncode == 0 for o in outputs) and any(o.returncode != 0 for o in outputs)
    for result in outputs:
        text = result.stdout + result.stderr
        assert PASSWORD not in text, (result.args, text)
        assert "Traceback" not in text, (result.args, text)
    assert any("***" in o.stdout + o.stderr for o in outputs), "the URLs are shown, masked"
    assert PASSWORD not in dump_database(secret_url)
    assert "abc" in dump_database(secret_url)  # the dump does see the data (the rejects table)


def test_dagster_metadata_and_events_hold_no_password(tmp_path: Path, secret_url: str) -> None:
    from filedge_dagster.definitions import build_definitions

    root = tmp_path / "pipeline"
    root.mkdir()
    ws = Workspace(root, audit_url=secret_url, dest_url=secret_url)
    ws.add("good.csv", orders_csv(2))
    ws.add("bad.csv", "order_id,amount\n1,x\n")
    set_file = root / "pipelines.yaml"
    set_file.write_text(yaml.safe_dump({"pipelines": [
        {"name": "orders", "dir": "incoming", "config": "pipeline.yaml", "audit_db_url": secret_url}
    ]}))
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        defs = build_definitions(str(set_file))
        sensor = defs.resolve_sensor_def("filedge_orders_sensor")
        result = sensor(dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources))
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        job = defs.resolve_implicit_global_asset_job_def()
        run_ids = [
            job.execute_in_process(
                instance=instance, tags=request.tags, asset_selection=request.asset_selection, raise_on_error=False
            ).run_id
            for request in result.run_requests or []
        ]
        failures = [
            run_id for run_id in run_ids
            if instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        ]
        assert failures, "the bad file fails its step"
        logs = "\n".join(str(entry) for run_id in run_ids for entry in instance.all_logs(run_id))
    assert PASSWORD not in logs
    assert "'x' is not a valid float" in logs and "rows_written" in logs  # the logs hold the details
