#!/usr/bin/env python3
"""Interoperability check with Confluent's own Python client (confluent-kafka).

Run by schemas/registry/tests/confluent_interop.rs, which starts our registry,
writes records encoded by our Rust code into WORK_DIR, and then runs:

    confluent_check.py REGISTRY_URL WORK_DIR

Checks, each failing with a message and exit code 1:
1. Confluent's SchemaRegistryClient registers, reads back, looks up and
   checks compatibility against our registry.
2. Confluent's AvroDeserializer decodes the Rust-encoded records (fetching the
   writer schema by id from our registry) into the values in expected.json.
3. Confluent's AvroSerializer encodes an ActivityTag into py_activity.bin, for
   the Rust side to decode.
"""
import json
import sys
import uuid
from pathlib import Path

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def check(cond, message):
    if not cond:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    url, work = sys.argv[1], Path(sys.argv[2])
    expected = json.loads((work / "expected.json").read_text())
    client = SchemaRegistryClient({"url": url})

    # 1. The registry API through Confluent's client.
    subject = expected["interop_subject"]
    v1 = json.dumps({"type": "record", "name": "Interop", "fields": [{"name": "a", "type": "string"}]})
    v2 = json.dumps({"type": "record", "name": "Interop", "fields": [
        {"name": "a", "type": "string"}, {"name": "b", "type": "long", "default": 0}]})
    id1 = client.register_schema(subject, Schema(v1, "AVRO"))
    check(client.register_schema(subject, Schema(v1, "AVRO")) == id1, "registering twice changed the id")
    check(client.test_compatibility(subject, Schema(v2, "AVRO")), "a defaulted field is compatible")
    bad = json.dumps({"type": "record", "name": "Interop", "fields": [{"name": "a", "type": "long"}]})
    check(not client.test_compatibility(subject, Schema(bad, "AVRO")), "string -> long is incompatible")
    id2 = client.register_schema(subject, Schema(v2, "AVRO"))
    check(id2 != id1, "a new schema got a new id")
    check(json.loads(client.get_schema(id1).schema_str) == json.loads(v1), "get_schema returned another schema")
    latest = client.get_latest_version(subject)
    check((latest.version, latest.schema_id) == (2, id2), f"latest is {latest.version}/{latest.schema_id}")
    check(client.get_versions(subject) == [1, 2], "versions")
    check(subject in client.get_subjects(), "subject listed")
    found = client.lookup_schema(subject, Schema(v1, "AVRO"))
    check((found.version, found.schema_id) == (1, id1), "lookup")
    check(client.get_compatibility() in ("BACKWARD", "FULL", "NONE"), "global config readable")
    print(f"registry API: ok (ids {id1}, {id2})")

    # 2. Rust-encoded records through Confluent's deserializer.
    deserializer = AvroDeserializer(client)
    for name, want in expected["records"].items():
        data = (work / f"{name}.bin").read_bytes()
        value = deserializer(data, SerializationContext(want["topic"], MessageField.VALUE))
        for path, expected_value in want["fields"].items():
            got = value
            for part in path.split("."):
                got = got[part]
            if isinstance(got, uuid.UUID):
                got = str(got)
            if isinstance(got, list):
                got = len(got)
            if isinstance(expected_value, float):
                check(abs(got - expected_value) < 1e-9, f"{name}.{path}: {got!r} != {expected_value!r}")
            else:
                check(got == expected_value, f"{name}.{path}: {got!r} != {expected_value!r}")
        print(f"decoded {name}: ok ({len(want['fields'])} fields compared)")

    # 3. A record encoded by Confluent's serializer, for Rust to decode.
    tag = expected["python_tag"]
    serializer = AvroSerializer(client, expected["activity_schema"], conf={"auto.register.schemas": True})
    ctx = SerializationContext(expected["activity_topic"], MessageField.VALUE)
    (work / "py_activity.bin").write_bytes(serializer(tag, ctx))
    print("encoded py_activity.bin: ok")


if __name__ == "__main__":
    main()
