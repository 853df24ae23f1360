"""Fidelity check: InfluxData's official Python client (`influxdb-client`), unmodified,
writing InfluxDB line protocol to a real lakegate gateway (`POST /api/v2/write`) with only
the URL and the token changed; the rows are read back from the emulator's table through the
Statement Execution API with the official Databricks SDK.

The emulator binary and the gateway binary run as processes on free loopback ports. Each
check prints one line; a closing 'influx fidelity: N passed, M failed' line follows, and the
exit code is non-zero on any failure.

Usage: python tests/influx_fidelity.py path/to/lakegate-emulator path/to/lakegate
"""

import datetime
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

import requests
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from sdk_fidelity import CLIENT_ID, CLIENT_SECRET, WAREHOUSE, client, free_port, run_checks, start_emulator

TABLE = "main.lakegate.readings"
DEVICE = "meter-1"
KEY = "lgk_" + secrets.token_urlsafe(32)
# An hour ago to the second: inside the gateway's accepted range whatever today is.
NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
WHEN = NOW - datetime.timedelta(hours=1)
SECONDS = int(WHEN.timestamp())


def start_gateway(binary: str, emulator_url: str, workdir: str) -> tuple[subprocess.Popen, str]:
    """A gateway on the emulator, knowing one device, once it answers /readyz."""
    registry = os.path.join(workdir, "devices.json")
    key_hash = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    with open(registry, "w") as f:
        json.dump({"devices": {DEVICE: {"keys": [key_hash]}}}, f)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABRICKS_HOST": emulator_url,
        "DATABRICKS_CLIENT_ID": CLIENT_ID,
        "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET,
        "DATABRICKS_WAREHOUSE_ID": WAREHOUSE,
        "DATABRICKS_APP_PORT": str(port),
        "LAKEGATE_TABLE": TABLE,
        "LAKEGATE_DEVICE_KEYS_FILE": registry,
        "LAKEGATE_LISTEN_ADDR": "127.0.0.1",
        "LAKEGATE_LINGER_MS": "50",
    }
    log = open(os.path.join(workdir, "gateway.log"), "w")
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{open(log.name).read()}")
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gateway not ready within 60 s:\n{open(log.name).read()}")


def rows(w, where: str = "") -> list[tuple]:
    """(metric, value, value_str, ts) of the device's rows, in order."""
    resp = w.statement_execution.execute_statement(
        statement=f"SELECT metric, value, value_str, ts FROM {TABLE} "
        f"WHERE device_id = '{DEVICE}' {where} ORDER BY metric, ts, value",
        warehouse_id=WAREHOUSE,
        wait_timeout="30s",
    )
    assert resp.status.state.value == "SUCCEEDED", resp.status
    return [tuple(row) for row in (resp.result.data_array or [])]


def influx(url: str, gzip: bool = False) -> InfluxDBClient:
    return InfluxDBClient(url=url, token=KEY, org="site", enable_gzip=gzip, timeout=60_000)


def check_points_of_every_type_gzipped(w, url):
    with influx(url, gzip=True) as c:
        point = (
            Point("weather")
            .tag("site", "north")
            .field("temp", 21.5)
            .field("count", 7)
            .field("ok", True)
            .field("state", 'say "hi", ok')
            .time(WHEN, WritePrecision.NS)
        )
        c.write_api(write_options=SYNCHRONOUS).write(bucket="plant", record=point)
    got = rows(w, "AND metric LIKE 'weather.%'")
    metrics = [(m, v, s) for m, v, s, _ in got]
    # The Statement Execution API returns every cell as a string.
    assert metrics == [
        ("weather.count", "7.0", None),
        ("weather.ok", "1.0", None),
        ("weather.state", None, 'say "hi", ok'),
        ("weather.temp", "21.5", None),
    ], metrics
    assert all(ts.startswith(WHEN.strftime("%Y-%m-%dT%H:%M:%S")) for *_, ts in got), got


def check_each_precision_lands_once(w, url):
    instant = {
        WritePrecision.S: SECONDS,
        WritePrecision.MS: SECONDS * 1_000,
        WritePrecision.US: SECONDS * 1_000_000,
        WritePrecision.NS: SECONDS * 1_000_000_000,
    }
    with influx(url) as c:
        write = c.write_api(write_options=SYNCHRONOUS)
        for precision, ts in instant.items():
            # Twice each: a resent batch lands once.
            for _ in range(2):
                write.write(
                    bucket="plant",
                    record=f"power,phase=a watts=120.5 {ts}\npower,phase=b watts=80i {ts}",
                    write_precision=precision,
                )
    got = rows(w, "AND metric = 'power.watts'")
    assert sorted(v for _, v, _, _ in got) == ["120.5", "80.0"], got


def check_partial_write(w, url):
    with influx(url) as c:
        write = c.write_api(write_options=SYNCHRONOUS)
        # Some lines refused: the client hears success, the valid lines land.
        write.write(
            bucket="plant",
            record=f"valve open=t {SECONDS}\nvalve open=maybe {SECONDS}\nvalve,x=1 shut=f {SECONDS}",
            write_precision=WritePrecision.S,
        )
        # None valid: an error naming each line.
        try:
            write.write(bucket="plant", record="valve\nvalve open=\"never closed")
        except ApiException as err:
            assert err.status == 400, err
            body = json.loads(err.body)
            assert [r["line"] for r in body["rejected"]] == [1, 2], body
        else:
            raise AssertionError("a write with no valid line was taken")
    got = rows(w, "AND metric LIKE 'valve.%'")
    assert [(m, v) for m, v, _, _ in got] == [("valve.open", "1.0"), ("valve.shut", "0.0")], got


def check_a_wrong_token_is_refused(_w, url):
    with InfluxDBClient(url=url, token="lgk_wrong", org="site") as c:
        try:
            c.write_api(write_options=SYNCHRONOUS).write(bucket="plant", record="m v=1")
        except ApiException as err:
            assert err.status == 401, err
        else:
            raise AssertionError("a wrong token was taken")


CHECKS = [
    check_points_of_every_type_gzipped,
    check_each_precision_lands_once,
    check_partial_write,
    check_a_wrong_token_is_refused,
]


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    emulator, emulator_url = start_emulator(sys.argv[1])
    gateway = None
    try:
        with tempfile.TemporaryDirectory() as workdir:
            gateway, url = start_gateway(sys.argv[2], emulator_url, workdir)
            w = client(emulator_url)
            passed, failed = run_checks(CHECKS, lambda check: check(w, url))
            gateway.terminate()
            gateway.wait(timeout=30)
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
        emulator.terminate()
        emulator.wait(timeout=10)
    print(f"influx fidelity: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
