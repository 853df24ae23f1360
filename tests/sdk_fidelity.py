"""Fidelity check: the official Databricks SDK for Python, unmodified, against the emulator.

If the official SDK cannot use the emulator, the emulator is wrong. The script starts
the emulator binary on a free loopback port, runs each check and prints one line per
check and a closing 'fidelity: N passed, M failed' line; it exits non-zero on any failure.

Usage: python tests/sdk_fidelity.py path/to/lakegate-emulator
"""

import base64
import io
import socket
import subprocess
import sys
import time
import traceback
import uuid

import pyarrow.ipc
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import NotFound
from databricks.sdk.service.sql import (
    Disposition,
    ExecuteStatementRequestOnWaitTimeout,
    Format,
    StatementParameterListItem,
    StatementState,
)

CLIENT_ID = "fidelity-sp"
CLIENT_SECRET = "fidelity-secret-" + uuid.uuid4().hex
WAREHOUSE = "fidelity-wh"
TABLE = "main.fidelity.readings"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_emulator(binary: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """Starts the emulator (plus the `extra` flags) and waits until it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--listen", f"127.0.0.1:{port}",
            "--service-principal", f"{CLIENT_ID}:{CLIENT_SECRET}",
            "--warehouse-id", WAREHOUSE,
            "--rows-per-chunk", "1000",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited early:\n{proc.stdout.read()}")
        try:
            requests.get(f"{url}/.well-known/databricks-config", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("emulator did not start listening within 30 s")


def client(url: str, secret: str = CLIENT_SECRET) -> WorkspaceClient:
    return WorkspaceClient(
        host=url,
        client_id=CLIENT_ID,
        client_secret=secret,
        auth_type="oauth-m2m",
    )


def wait_for(w: WorkspaceClient, statement_id: str):
    deadline = time.monotonic() + 60
    while True:
        resp = w.statement_execution.get_statement(statement_id)
        if resp.status.state not in (StatementState.PENDING, StatementState.RUNNING):
            return resp
        assert time.monotonic() < deadline, "statement did not finish in 60 s"
        time.sleep(0.1)


def check_oauth_m2m_login(w: WorkspaceClient, url: str):
    headers = w.config.authenticate()
    assert headers["Authorization"].startswith("Bearer "), headers.keys()
    # The same request without a token is refused in Databricks' error shape.
    resp = requests.get(f"{url}/api/2.0/secrets/scopes/list", timeout=5)
    assert resp.status_code == 401, resp.status_code
    assert "error_code" in resp.json(), resp.text


def check_bad_client_secret(_w: WorkspaceClient, url: str):
    try:
        list(client(url, secret="wrong").secrets.list_scopes())
    except Exception as err:  # the SDK raises its own auth error type
        assert "invalid" in str(err).lower() or "401" in str(err), err
    else:
        raise AssertionError("a wrong client secret was accepted")


def check_secrets(w: WorkspaceClient, _url: str):
    scope = "fidelity-" + uuid.uuid4().hex[:8]
    w.secrets.create_scope(scope=scope)
    w.secrets.put_secret(scope=scope, key="device-keys", string_value='{"devices": {}}')
    w.secrets.put_secret(scope=scope, key="raw.bytes", bytes_value=base64.b64encode(b"\x00\x01").decode())
    got = w.secrets.get_secret(scope=scope, key="device-keys")
    assert base64.b64decode(got.value) == b'{"devices": {}}', got
    keys = sorted(s.key for s in w.secrets.list_secrets(scope=scope))
    assert keys == ["device-keys", "raw.bytes"], keys
    try:
        w.secrets.get_secret(scope=scope, key="missing")
    except NotFound:
        pass
    else:
        raise AssertionError("a missing secret was found")


def check_statement_with_parameters(w: WorkspaceClient, _url: str):
    for sql in (
        "CREATE SCHEMA IF NOT EXISTS main.fidelity",
        f"CREATE TABLE IF NOT EXISTS {TABLE} (device_id STRING NOT NULL, ts TIMESTAMP NOT NULL, "
        "value DOUBLE, note STRING) USING DELTA CLUSTER BY (device_id, ts)",
    ):
        resp = w.statement_execution.execute_statement(statement=sql, warehouse_id=WAREHOUSE, wait_timeout="30s")
        assert resp.status.state == StatementState.SUCCEEDED, resp.status
    insert = w.statement_execution.execute_statement(
        statement=f"INSERT INTO {TABLE} VALUES (:device, :ts, :value, :note)",
        warehouse_id=WAREHOUSE,
        parameters=[
            StatementParameterListItem(name="device", value="sensor-1"),
            StatementParameterListItem(name="ts", value="2026-11-29T12:00:00Z", type="TIMESTAMP"),
            StatementParameterListItem(name="value", value="21.5", type="DOUBLE"),
            StatementParameterListItem(name="note", type="STRING"),
        ],
        wait_timeout="30s",
    )
    assert insert.status.state == StatementState.SUCCEEDED, insert.status
    resp = w.statement_execution.execute_statement(
        statement=f"SELECT device_id, value, note FROM {TABLE} WHERE device_id = :device",
        warehouse_id=WAREHOUSE,
        parameters=[StatementParameterListItem(name="device", value="sensor-1")],
        wait_timeout="10s",
    )
    assert resp.status.state == StatementState.SUCCEEDED, resp.status
    assert [c.name for c in resp.manifest.schema.columns] == ["device_id", "value", "note"]
    assert resp.result.data_array == [["sensor-1", "21.5", None]], resp.result.data_array


def check_pending_then_polled(w: WorkspaceClient, _url: str):
    resp = w.statement_execution.execute_statement(
        statement=f"SELECT count(*) AS n FROM {TABLE}",
        warehouse_id=WAREHOUSE,
        wait_timeout="0s",
        on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CONTINUE,
    )
    assert resp.status.state in (StatementState.PENDING, StatementState.RUNNING), resp.status
    done = wait_for(w, resp.statement_id)
    assert done.status.state == StatementState.SUCCEEDED, done.status
    assert done.result.data_array == [["1"]], done.result


def check_failed_sql(w: WorkspaceClient, _url: str):
    resp = w.statement_execution.execute_statement(
        statement="SELECT * FROM main.fidelity.no_such_table", warehouse_id=WAREHOUSE, wait_timeout="10s"
    )
    assert resp.status.state == StatementState.FAILED, resp.status
    assert resp.status.error.message, resp.status


def check_external_links_arrow(w: WorkspaceClient, _url: str):
    rows = 2500  # spans three chunks of 1000 rows
    values = ", ".join(f"('bulk', TIMESTAMP '2026-11-29 00:00:00', {i}, NULL)" for i in range(rows))
    resp = w.statement_execution.execute_statement(
        statement=f"INSERT INTO {TABLE} VALUES {values}", warehouse_id=WAREHOUSE, wait_timeout="30s"
    )
    assert resp.status.state == StatementState.SUCCEEDED, resp.status
    resp = w.statement_execution.execute_statement(
        statement=f"SELECT value FROM {TABLE} WHERE device_id = 'bulk' ORDER BY value",
        warehouse_id=WAREHOUSE,
        disposition=Disposition.EXTERNAL_LINKS,
        format=Format.ARROW_STREAM,
        wait_timeout="30s",
    )
    assert resp.status.state == StatementState.SUCCEEDED, resp.status
    assert resp.manifest.total_row_count == rows, resp.manifest
    assert resp.manifest.total_chunk_count == 3, resp.manifest
    values = []
    link = resp.result.external_links[0]
    while True:
        # Presigned links are fetched without the workspace token, with the link's own headers.
        download = requests.get(link.external_link, headers=link.http_headers or {}, timeout=10)
        download.raise_for_status()
        table = pyarrow.ipc.open_stream(io.BytesIO(download.content)).read_all()
        values.extend(table.column("value").to_pylist())
        if link.next_chunk_index is None:
            break
        chunk = w.statement_execution.get_statement_result_chunk_n(resp.statement_id, link.next_chunk_index)
        link = chunk.external_links[0]
    assert values == [float(i) for i in range(rows)], values[:5]


def check_cancel(w: WorkspaceClient, _url: str):
    resp = w.statement_execution.execute_statement(
        statement=f"SELECT count(*) FROM {TABLE}", warehouse_id=WAREHOUSE, wait_timeout="0s"
    )
    w.statement_execution.cancel_execution(resp.statement_id)
    done = wait_for(w, resp.statement_id)
    # A fast statement may finish before the cancel arrives, as on Databricks.
    assert done.status.state in (StatementState.CANCELED, StatementState.SUCCEEDED), done.status


CHECKS = [
    check_oauth_m2m_login,
    check_bad_client_secret,
    check_secrets,
    check_statement_with_parameters,
    check_pending_then_polled,
    check_failed_sql,
    check_external_links_arrow,
    check_cancel,
]


def run_checks(checks, run) -> tuple[int, int]:
    """Runs `run(check)` for each check, printing each outcome; returns (passed, failed)."""
    passed = failed = 0
    for check in checks:
        try:
            run(check)
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__}")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {check.__name__}")
    return passed, failed


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    proc, url = start_emulator(sys.argv[1])
    try:
        w = client(url)
        passed, failed = run_checks(CHECKS, lambda check: check(w, url))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"fidelity: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
