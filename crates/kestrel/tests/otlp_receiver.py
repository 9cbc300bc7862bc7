#!/usr/bin/env python3
"""A real OTLP receiver for Kestrel's end-to-end tests.

It serves ProfilesService/Export (profiles v1development, proto v1.10.0) and
MetricsService/Export over gRPC with the official generated classes of PyPI
`opentelemetry-proto` and `grpcio`, so what Kestrel sends is judged by the
reference schema rather than by Kestrel's own encoder.

    otlp_receiver.py serve --out FILE [--port N] [--fail-first N] [--stall]
                           [--max-seconds S] [--track-prefix P]
    otlp_receiver.py check FILE [--track-prefix P]

`serve` prints `port N` on stdout once it listens (--port 0 picks a free port),
then appends one JSON object per request to --out. `check` validates one
serialized ExportProfilesServiceRequest (`kestrel record --format otlp`), prints
the same JSON object and exits 1 when it has errors.

Every profiles request is checked: no unknown fields anywhere (the sender speaks
a different schema version otherwise), entry 0 of every dictionary table present
and the zero value, every index in range of its table, every sample carrying a
value or timestamp, profile ids 16 non-zero bytes. The record also carries the
sample value totals per sample type, so a test compares them with what the agent
counted.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

INSTALL_HINT = (
    "the OTLP receiver needs PyPI opentelemetry-proto 1.45.x and grpcio: "
    "python3 -m venv target/otlp-venv && "
    "target/otlp-venv/bin/pip install 'opentelemetry-proto==1.45.*' grpcio"
)

try:
    import grpc
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.unknown_fields import UnknownFieldSet
    from opentelemetry.proto.collector.metrics.v1 import (
        metrics_service_pb2,
        metrics_service_pb2_grpc,
    )
    from opentelemetry.proto.collector.profiles.v1development import (
        profiles_service_pb2,
        profiles_service_pb2_grpc,
    )
except ImportError as error:  # pragma: no cover - the message is the point
    print(f"otlp_receiver: {error}; {INSTALL_HINT}", file=sys.stderr)
    sys.exit(3)

MAX_ERRORS_KEPT = 20


class Errors:
    """Collects validation errors, keeping the first few messages and a count."""

    def __init__(self):
        self.messages = []
        self.count = 0

    def add(self, message):
        self.count += 1
        if len(self.messages) < MAX_ERRORS_KEPT:
            self.messages.append(message)


def is_repeated(field):
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def check_no_unknown_fields(message, path, errors):
    """Unknown fields mean the sender used field numbers this schema lacks."""
    unknown = UnknownFieldSet(message)
    if len(unknown) > 0:
        numbers = sorted({field.field_number for field in unknown})
        errors.add(f"{path}: unknown field numbers {numbers}")
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if is_repeated(field):
            for i, item in enumerate(value):
                check_no_unknown_fields(item, f"{path}.{field.name}[{i}]", errors)
        else:
            check_no_unknown_fields(value, f"{path}.{field.name}", errors)


def any_value_text(value, strings):
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value_strindex":
        index = value.string_value_strindex
        return strings[index] if 0 <= index < len(strings) else None
    if kind in ("array_value", "kvlist_value"):
        return kind
    return getattr(value, kind)


def validate_profiles_request(request, track_prefix=None):
    """Validates one ExportProfilesServiceRequest; returns the JSON-able record."""
    errors = Errors()
    check_no_unknown_fields(request, "request", errors)
    dictionary = request.dictionary
    if not request.HasField("dictionary"):
        errors.add("request has no dictionary")
    strings = list(dictionary.string_table)
    tables = {
        "mapping_table": dictionary.mapping_table,
        "location_table": dictionary.location_table,
        "function_table": dictionary.function_table,
        "link_table": dictionary.link_table,
        "attribute_table": dictionary.attribute_table,
        "stack_table": dictionary.stack_table,
    }
    sizes = {name: len(table) for name, table in tables.items()}
    sizes["string_table"] = len(strings)
    for name, table in tables.items():
        if len(table) == 0:
            errors.add(f"dictionary.{name} is empty: entry 0 (the zero value) is missing")
        elif table[0].ByteSize() != 0:
            errors.add(f"dictionary.{name}[0] is not the zero value: {table[0]}")
    if not strings:
        errors.add("dictionary.string_table is empty: entry 0 (\"\") is missing")
    elif strings[0] != "":
        errors.add(f"dictionary.string_table[0] is {strings[0]!r}, not \"\"")

    def in_range(path, index, table_name):
        size = sizes[table_name]
        if not 0 <= index < size:
            errors.add(f"{path} = {index} is out of range of {table_name} (size {size})")
            return False
        return True

    def check_key_values(path, key_values):
        for i, kv in enumerate(key_values):
            in_range(f"{path}[{i}].key_strindex", kv.key_strindex, "string_table")
            if kv.value.WhichOneof("value") == "string_value_strindex":
                in_range(f"{path}[{i}].value.string_value_strindex",
                         kv.value.string_value_strindex, "string_table")

    def check_attribute_indices(path, indices):
        for i, index in enumerate(indices):
            in_range(f"{path}[{i}]", index, "attribute_table")

    for i, m in enumerate(dictionary.mapping_table):
        in_range(f"mapping_table[{i}].filename_strindex", m.filename_strindex, "string_table")
        check_attribute_indices(f"mapping_table[{i}].attribute_indices", m.attribute_indices)
    for i, loc in enumerate(dictionary.location_table):
        in_range(f"location_table[{i}].mapping_index", loc.mapping_index, "mapping_table")
        for j, line in enumerate(loc.lines):
            in_range(f"location_table[{i}].lines[{j}].function_index",
                     line.function_index, "function_table")
        check_attribute_indices(f"location_table[{i}].attribute_indices", loc.attribute_indices)
    for i, f in enumerate(dictionary.function_table):
        for field in ("name_strindex", "system_name_strindex", "filename_strindex"):
            in_range(f"function_table[{i}].{field}", getattr(f, field), "string_table")
    for i, a in enumerate(dictionary.attribute_table):
        in_range(f"attribute_table[{i}].key_strindex", a.key_strindex, "string_table")
        in_range(f"attribute_table[{i}].unit_strindex", a.unit_strindex, "string_table")
        if a.value.WhichOneof("value") == "string_value_strindex":
            in_range(f"attribute_table[{i}].value.string_value_strindex",
                     a.value.string_value_strindex, "string_table")
    for i, s in enumerate(dictionary.stack_table):
        for j, index in enumerate(s.location_indices):
            in_range(f"stack_table[{i}].location_indices[{j}]", index, "location_table")

    def string(index):
        return strings[index] if 0 <= index < len(strings) else None

    def attribute_key(index):
        if not 0 <= index < sizes["attribute_table"]:
            return None
        return string(dictionary.attribute_table[index].key_strindex)

    def function_names_of_stack(stack_index):
        names = set()
        if not 0 <= stack_index < sizes["stack_table"]:
            return names
        for location_index in dictionary.stack_table[stack_index].location_indices:
            if not 0 <= location_index < sizes["location_table"]:
                continue
            for line in dictionary.location_table[location_index].lines:
                if 0 <= line.function_index < sizes["function_table"]:
                    name = string(dictionary.function_table[line.function_index].name_strindex)
                    if name:
                        names.add(name)
        return names

    resource = {}
    totals = {}
    sample_counts = {}
    periods = {}
    sample_attribute_keys = set()
    pids = set()
    tracked = {}
    profile_starts = []
    profile_count = 0
    for r, resource_profiles in enumerate(request.resource_profiles):
        check_key_values(f"resource_profiles[{r}].resource.attributes",
                         resource_profiles.resource.attributes)
        for kv in resource_profiles.resource.attributes:
            key = kv.key or string(kv.key_strindex)
            resource[key] = any_value_text(kv.value, strings)
        for s, scope_profiles in enumerate(resource_profiles.scope_profiles):
            for p, profile in enumerate(scope_profiles.profiles):
                profile_count += 1
                path = f"resource_profiles[{r}].scope_profiles[{s}].profiles[{p}]"
                if not profile.HasField("sample_type"):
                    errors.add(f"{path} has no sample_type")
                st = profile.sample_type
                ok_type = in_range(f"{path}.sample_type.type_strindex", st.type_strindex,
                                   "string_table")
                ok_unit = in_range(f"{path}.sample_type.unit_strindex", st.unit_strindex,
                                   "string_table")
                type_name = (f"{string(st.type_strindex)}/{string(st.unit_strindex)}"
                             if ok_type and ok_unit else f"invalid#{p}")
                if profile.HasField("period_type"):
                    pt = profile.period_type
                    in_range(f"{path}.period_type.type_strindex", pt.type_strindex, "string_table")
                    in_range(f"{path}.period_type.unit_strindex", pt.unit_strindex, "string_table")
                    periods[type_name] = [
                        f"{string(pt.type_strindex)}/{string(pt.unit_strindex)}", profile.period
                    ]
                if len(profile.profile_id) != 16 or profile.profile_id == bytes(16):
                    errors.add(f"{path}.profile_id must be 16 bytes, not all zero: "
                               f"{profile.profile_id.hex()!r}")
                check_attribute_indices(f"{path}.attribute_indices", profile.attribute_indices)
                profile_starts.append(profile.time_unix_nano)
                total = 0
                for i, sample in enumerate(profile.samples):
                    sp = f"{path}.samples[{i}]"
                    in_range(f"{sp}.stack_index", sample.stack_index, "stack_table")
                    in_range(f"{sp}.link_index", sample.link_index, "link_table")
                    check_attribute_indices(f"{sp}.attribute_indices", sample.attribute_indices)
                    values = list(sample.values)
                    stamps = list(sample.timestamps_unix_nano)
                    if not values and not stamps:
                        errors.add(f"{sp} has neither values nor timestamps_unix_nano")
                    if values and stamps and len(values) != len(stamps):
                        errors.add(f"{sp} has {len(values)} values but {len(stamps)} timestamps")
                    value = sum(values) if values else len(stamps)
                    if value < 0:
                        errors.add(f"{sp} has a negative value {value}")
                    total += value
                    for index in sample.attribute_indices:
                        key = attribute_key(index)
                        if key is None:
                            continue
                        sample_attribute_keys.add(key)
                        if key == "process.pid":
                            pids.add(dictionary.attribute_table[index].value.int_value)
                    if track_prefix:
                        for name in function_names_of_stack(sample.stack_index):
                            if name.startswith(track_prefix):
                                per_type = tracked.setdefault(name, {})
                                per_type[type_name] = per_type.get(type_name, 0) + value
                totals[type_name] = totals.get(type_name, 0) + total
                sample_counts[type_name] = sample_counts.get(type_name, 0) + len(profile.samples)
    return {
        "service": "profiles",
        "bytes": request.ByteSize(),
        "errors": errors.messages,
        "error_count": errors.count,
        "profiles": profile_count,
        "totals": totals,
        "sample_counts": sample_counts,
        "periods": periods,
        "profile_start_unix_nano": min(profile_starts) if profile_starts else None,
        "resource": resource,
        "sample_attribute_keys": sorted(sample_attribute_keys),
        "pids": sorted(pids),
        "tracked_functions": tracked,
        "dictionary": sizes,
    }


def number_point_value(point):
    kind = point.WhichOneof("value")
    return getattr(point, kind) if kind else None


def summarize_metrics_request(request):
    errors = Errors()
    check_no_unknown_fields(request, "request", errors)
    metrics = {}
    resource = {}
    for resource_metrics in request.resource_metrics:
        for kv in resource_metrics.resource.attributes:
            resource[kv.key] = any_value_text(kv.value, [])
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                points = []
                if kind in ("gauge", "sum"):
                    for point in getattr(metric, kind).data_points:
                        points.append({
                            "attributes": {kv.key: any_value_text(kv.value, [])
                                           for kv in point.attributes},
                            "value": number_point_value(point),
                        })
                metrics.setdefault(metric.name, {"kind": kind, "points": []})
                metrics[metric.name]["points"].extend(points)
    return {
        "service": "metrics",
        "bytes": request.ByteSize(),
        "errors": errors.messages,
        "error_count": errors.count,
        "resource": resource,
        "metrics": metrics,
    }


class Recorder:
    """Appends one JSON line per request; a line is complete once written."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")
        self.sequence = 0

    def write(self, record):
        with self.lock:
            self.sequence += 1
            record["seq"] = self.sequence
            self.file.write(json.dumps(record, sort_keys=True) + "\n")
            self.file.flush()


class Behaviour:
    def __init__(self, fail_first, stall):
        self.lock = threading.Lock()
        self.failures_left = fail_first
        self.stall = stall
        self.stopping = threading.Event()

    def next_answer(self):
        if self.stall:
            return "stalled"
        with self.lock:
            if self.failures_left > 0:
                self.failures_left -= 1
                return "unavailable"
        return "ok"


def metadata_of(context):
    return {key: value for key, value in context.invocation_metadata()
            if isinstance(value, str) and key not in ("user-agent",)}


class ProfilesReceiver(profiles_service_pb2_grpc.ProfilesServiceServicer):
    def __init__(self, recorder, behaviour, track_prefix):
        self.recorder = recorder
        self.behaviour = behaviour
        self.track_prefix = track_prefix

    def Export(self, request, context):
        record = validate_profiles_request(request, self.track_prefix)
        record["received_unix"] = time.time()
        record["metadata"] = metadata_of(context)
        answer = self.behaviour.next_answer()
        record["answer"] = answer
        self.recorder.write(record)
        if answer == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "test receiver: failing on purpose")
        if answer == "stalled":
            # Hold the call until the client gives up (its deadline) or we stop.
            while context.is_active() and not self.behaviour.stopping.wait(0.05):
                pass
            context.abort(grpc.StatusCode.UNAVAILABLE, "test receiver: stalled")
        return profiles_service_pb2.ExportProfilesServiceResponse()


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, recorder):
        self.recorder = recorder

    def Export(self, request, context):
        record = summarize_metrics_request(request)
        record["received_unix"] = time.time()
        record["answer"] = "ok"
        self.recorder.write(record)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def serve(args):
    recorder = Recorder(args.out)
    behaviour = Behaviour(args.fail_first, args.stall)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        # Without this a second server could bind the same port and steal requests.
        options=[("grpc.so_reuseport", 0),
                 ("grpc.max_receive_message_length", 256 * 1024 * 1024)],
    )
    profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(
        ProfilesReceiver(recorder, behaviour, args.track_prefix), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsReceiver(recorder), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if port == 0:
        print(f"otlp_receiver: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 2
    server.start()

    def stop(*_):
        behaviour.stopping.set()
        server.stop(0)
        # Bounded no matter what a handler is doing.
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Timer(args.max_seconds, stop).start()
    print(f"port {port}", flush=True)
    server.wait_for_termination()
    return 0


def check(args):
    request = profiles_service_pb2.ExportProfilesServiceRequest()
    with open(args.file, "rb") as f:
        request.ParseFromString(f.read())
    record = validate_profiles_request(request, args.track_prefix)
    print(json.dumps(record, sort_keys=True))
    return 1 if record["error_count"] else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve", help="serve ProfilesService and MetricsService")
    s.add_argument("--port", type=int, default=0, help="0 picks a free port")
    s.add_argument("--out", required=True, help="JSON lines, one per request")
    s.add_argument("--fail-first", type=int, default=0, help="answer UNAVAILABLE N times")
    s.add_argument("--stall", action="store_true", help="never answer profiles requests")
    s.add_argument("--max-seconds", type=float, default=120.0, help="exit by itself after this")
    s.add_argument("--track-prefix", help="sum sample values of functions with this prefix")
    c = commands.add_parser("check", help="validate one serialized request file")
    c.add_argument("file")
    c.add_argument("--track-prefix")
    args = parser.parse_args()
    return serve(args) if args.command == "serve" else check(args)


if __name__ == "__main__":
    sys.exit(main())
