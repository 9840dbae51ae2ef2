#!/usr/bin/env python3
"""Checks hotdog's structured records with the official tools, for tests/records.rs.

    check_records.py json SCHEMA FILE   each line of FILE is a record; validated against the
                                        JSON Schema SCHEMA (with format checks); prints "ok N"
    check_records.py otlp FILE          each line is a record's bytes in hex; decoded as an
                                        OpenTelemetry ExportLogsServiceRequest; prints one JSON
                                        summary per record (its first log record)

Exits 1 with the reasons when a record is not valid.
"""
import json
import sys


def check_json(schema_path, path):
    import jsonschema
    schema = json.load(open(schema_path))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = []
    lines = [l for l in open(path) if l.strip()]
    for i, line in enumerate(lines):
        record = json.loads(line)
        for e in validator.iter_errors(record):
            errors.append(f"record {i}: {e.json_path}: {e.message}")
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print(f"ok {len(lines)}")


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def check_otlp(path):
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    for line in open(path):
        if not line.strip():
            continue
        request = ExportLogsServiceRequest()
        request.ParseFromString(bytes.fromhex(line.strip()))
        resource = request.resource_logs[0].resource
        scope = request.resource_logs[0].scope_logs[0].scope
        record = request.resource_logs[0].scope_logs[0].log_records[0]
        print(json.dumps({
            "resource": {kv.key: any_value(kv.value) for kv in resource.attributes},
            "scope": [scope.name, scope.version],
            "time_unix_nano": record.time_unix_nano,
            "observed_time_unix_nano": record.observed_time_unix_nano,
            "severity_number": record.severity_number,
            "severity_text": record.severity_text,
            "body": any_value(record.body),
            "attributes": {kv.key: any_value(kv.value) for kv in record.attributes},
        }))


if __name__ == "__main__":
    if sys.argv[1] == "json":
        check_json(sys.argv[2], sys.argv[3])
    else:
        check_otlp(sys.argv[2])
