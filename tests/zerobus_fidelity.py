"""Fidelity check: Databricks' official Zerobus Ingest SDK for Python, unmodified, against
the emulator's Zerobus service.

The SDK (a client nobody here wrote) fetches its table-scoped token from the emulator's
/oidc/v1/token, streams JSON records over gRPC, and the rows are read back through the
Statement Execution API with the official Databricks SDK. Each check starts its own emulator
binary (with the faults it needs) on free loopback ports; records are JSON, and PROTO
with a descriptor built at run time,, and prints one line; a closing
'zerobus fidelity: N passed, M failed' line follows, and the exit code is non-zero on any
failure.

Usage: python tests/zerobus_fidelity.py path/to/lakegate-emulator
"""

import contextlib
import json
import os
import sys
import time

# The SDK's Rust core logs every stream event at INFO; keep the check's output to its lines.
os.environ.setdefault("RUST_LOG", "warn")

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from zerobus import (
    RecordType,
    StreamConfigurationOptions,
    TableProperties,
    ZerobusException,
    ZerobusSdk,
)

from sdk_fidelity import (
    CLIENT_ID,
    CLIENT_SECRET,
    WAREHOUSE,
    client,
    free_port,
    run_checks,
    start_emulator,
)

TABLE = "main.zerobus.readings"
JSON_OPTIONS = dict(record_type=RecordType.JSON)


@contextlib.contextmanager
def workspace(binary: str, *faults: str):
    """An emulator serving Zerobus, with the readings table created; yields (sdk, w)."""
    zerobus_port = free_port()
    proc, url = start_emulator(binary, "--zerobus-listen", f"127.0.0.1:{zerobus_port}", *faults)
    try:
        w = client(url)
        for sql in (
            "CREATE SCHEMA IF NOT EXISTS main.zerobus",
            f"CREATE TABLE {TABLE} (device_id STRING NOT NULL, reading_id BIGINT NOT NULL, "
            "value DOUBLE, ts TIMESTAMP NOT NULL)",
        ):
            resp = w.statement_execution.execute_statement(
                statement=sql, warehouse_id=WAREHOUSE, wait_timeout="30s"
            )
            assert resp.status.state.value == "SUCCEEDED", resp.status
        yield ZerobusSdk(f"http://127.0.0.1:{zerobus_port}", url), w
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def open_stream(sdk, **options):
    return sdk.create_stream(
        CLIENT_ID,
        CLIENT_SECRET,
        TableProperties(TABLE),
        StreamConfigurationOptions(**JSON_OPTIONS, **options),
    )


def record(device: str, reading_id: int) -> str:
    return json.dumps(
        {"device_id": device, "reading_id": reading_id, "value": reading_id / 2,
         "ts": "2026-01-02T03:04:05.000Z"}
    )


def rows(w) -> list:
    resp = w.statement_execution.execute_statement(
        statement=f"SELECT device_id, reading_id, value FROM {TABLE} ORDER BY device_id, reading_id",
        warehouse_id=WAREHOUSE,
        wait_timeout="30s",
    )
    assert resp.status.state.value == "SUCCEEDED", resp.status
    return resp.result.data_array or []


def check_json_records_read_back_through_sql(binary: str):
    with workspace(binary) as (sdk, w):
        stream = open_stream(sdk)
        first = stream.ingest_record_offset(record("dev-1", 1))
        stream.wait_for_offset(first)
        last = stream.ingest_records_offset([record("dev-2", 2), record("dev-2", 3)])
        stream.wait_for_offset(last)
        stream.flush()
        stream.close()
        got = rows(w)
        assert got == [["dev-1", "1", "0.5"], ["dev-2", "2", "1.0"], ["dev-2", "3", "1.5"]], got


def reading_class():
    """A protobuf message class for the readings table, built at run time (TIMESTAMP as
    epoch microseconds in an int64, as Zerobus maps it)."""
    fields = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="reading.proto", package="fidelity", syntax="proto2")
    message = file.message_type.add(name="Reading")
    for number, (name, kind) in enumerate(
        [("device_id", fields.TYPE_STRING), ("reading_id", fields.TYPE_INT64),
         ("value", fields.TYPE_DOUBLE), ("ts", fields.TYPE_INT64)],
        start=1,
    ):
        message.field.add(name=name, number=number, type=kind, label=fields.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("fidelity.Reading"))


def check_proto_records_read_back_through_sql(binary: str):
    reading = reading_class()
    with workspace(binary) as (sdk, w):
        stream = sdk.create_stream(
            CLIENT_ID,
            CLIENT_SECRET,
            TableProperties(TABLE, reading.DESCRIPTOR),
            StreamConfigurationOptions(record_type=RecordType.PROTO),
        )
        last = None
        for reading_id in (1, 2):
            record = reading(device_id="dev-p", reading_id=reading_id, value=reading_id * 1.5,
                             ts=1_767_323_045_000_000)
            last = stream.ingest_record_offset(record.SerializeToString())
        stream.wait_for_offset(last)
        stream.close()
        got = rows(w)
        assert got == [["dev-p", "1", "1.5"], ["dev-p", "2", "3.0"]], got


def check_a_record_that_does_not_fit_is_refused(binary: str):
    with workspace(binary) as (sdk, w):
        stream = open_stream(sdk, recovery=False)
        try:
            offset = stream.ingest_record_offset(json.dumps({"device_id": "dev-x", "colour": "red"}))
            stream.wait_for_offset(offset)
        except ZerobusException as err:
            assert "colour" in str(err) or "invalid" in str(err).lower(), err
        else:
            raise AssertionError("a record with an unknown field was acknowledged")
        assert rows(w) == [], rows(w)


def check_the_sdk_recovers_from_server_closed_streams(binary: str):
    # Streams live 1 s (then a close signal, and 6002 half a second later): the SDK pauses,
    # reconnects and re-sends; every record lands, duplicates allowed (at-least-once).
    faults = ("--zerobus-stream-lifetime-secs", "1", "--zerobus-close-grace-secs", "0.5")
    with workspace(binary, *faults) as (sdk, w):
        stream = open_stream(sdk)
        deadline = time.monotonic() + 4
        sent = 0
        while time.monotonic() < deadline:
            offset = stream.ingest_record_offset(record("dev-c", sent))
            sent += 1
            time.sleep(0.02)
        stream.wait_for_offset(offset)
        stream.flush()
        stream.close()
        landed = {int(row[1]) for row in rows(w)}
        assert landed == set(range(sent)), (sent, sorted(set(range(sent)) - landed))


def check_a_lost_ack_is_resent_as_a_duplicate(binary: str):
    with workspace(binary, "--zerobus-lost-acks", "1") as (sdk, w):
        stream = open_stream(sdk)
        offset = stream.ingest_record_offset(record("dev-d", 1))
        stream.wait_for_offset(offset)
        stream.flush()
        stream.close()
        got = rows(w)
        assert got == [["dev-d", "1", "0.5"], ["dev-d", "1", "0.5"]], got


CHECKS = [
    check_json_records_read_back_through_sql,
    check_proto_records_read_back_through_sql,
    check_a_record_that_does_not_fit_is_refused,
    check_the_sdk_recovers_from_server_closed_streams,
    check_a_lost_ack_is_resent_as_a_duplicate,
]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    passed, failed = run_checks(CHECKS, lambda check: check(sys.argv[1]))
    print(f"zerobus fidelity: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
