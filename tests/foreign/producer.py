"""A foreign producer for imgstream's tests: confluent-kafka-python 2.11.1, the client most
producers in the field use, with its own librdkafka and its own Avro serializer.

    producer.py codecs  BOOTSTRAP TOPIC REGISTRY_URL PER_CODEC
    producer.py hostile BOOTSTRAP TOPIC REGISTRY_URL

`codecs` sends PER_CODEC valid images with each compression codec Kafka knows. `hostile` sends, on
partition 0, each record shape that once stopped the consumer, each followed by a valid image.
Both print one JSON object: what was sent, in order, with the code the consumer should give
each refused record (null for a record it should store).
"""

import io
import json
import struct
import sys
import uuid
import zlib
import hashlib
import datetime

import fastavro
import requests
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def png(width, height, seed):
    """A small valid PNG, made by hand: rows of one grey level."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes([(seed * 37 + y) % 256]) * width for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def image_record(seed, **overrides):
    data = png(24, 16, seed)
    record = {
        "image_id": str(uuid.uuid4()),
        "customer_id": "foreign-customer",
        "source_id": "foreign-cam",
        "created_at": datetime.datetime.now(datetime.timezone.utc),
        "content_type": "image/png",
        "width": 24,
        "height": 16,
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
    }
    record.update(overrides)
    return record


def serializer(registry_url, topic):
    """confluent-kafka's own Avro serializer, writing with the schema imgstream's setup
    registered under the topic's subject (never registering one of its own)."""
    client = SchemaRegistryClient({"url": registry_url})
    latest = client.get_latest_version(f"{topic}-value")
    serialize = AvroSerializer(
        client,
        latest.schema.schema_str,
        to_dict=lambda record, ctx: record,
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    ctx = SerializationContext(topic, MessageField.VALUE)
    return (lambda record: serialize(record, ctx)), json.loads(latest.schema.schema_str), latest.schema_id


def plain(schema):
    """The schema without logical types: to write values its logical types would refuse."""
    schema = json.loads(json.dumps(schema))
    for field in schema["fields"]:
        if isinstance(field["type"], dict) and "logicalType" in field["type"]:
            field["type"] = field["type"]["type"]
    return fastavro.parse_schema(schema)


def framed(schema_id, schema, record):
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def zigzag(n):
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z == 0:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def deliver(producer, topic, partition, value, key=b"foreign", headers=None):
    failures = []

    def report(err, _msg):
        if err is not None:
            failures.append(str(err))

    producer.produce(topic, value=value, key=key, partition=partition, headers=headers or [], on_delivery=report)
    producer.flush(30)
    if failures:
        raise SystemExit(f"delivery failed: {failures}")


def codecs(bootstrap, topic, registry_url, per_codec):
    serialize, _, _ = serializer(registry_url, topic)
    sent = []
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        producer = Producer({
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "linger.ms": 50,
        })
        for i in range(per_codec):
            record = image_record(len(sent) + i)
            producer.produce(topic, value=serialize(record), key=f"cam-{i % 3}".encode())
            sent.append({"kind": f"codec {codec}", "image_id": record["image_id"], "code": None})
        producer.flush(30)
    print(json.dumps({"sent": sent}))


def hostile(bootstrap, topic, registry_url):
    serialize, schema, schema_id = serializer(registry_url, topic)
    writer = plain(schema)
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 20_000_000})
    sent = []

    def valid(seed):
        record = image_record(seed)
        deliver(producer, topic, 0, serialize(record))
        sent.append({"kind": "valid", "image_id": record["image_id"], "code": None})

    def refused(kind, code, value, headers=None):
        deliver(producer, topic, 0, value, headers=headers)
        sent.append({"kind": kind, "image_id": None, "code": code})

    def with_fields(seed, **fields):
        record = image_record(seed, **fields)
        if isinstance(record["created_at"], datetime.datetime):
            record["created_at"] = int(record["created_at"].timestamp() * 1_000_000)
        return framed(schema_id, writer, record)

    # A schema registered under another subject, with an array field; the datum claims 500
    # million elements in it.
    tagged = json.loads(json.dumps(schema))
    tagged["fields"].append({"name": "tags", "type": {"type": "array", "items": "long"}, "default": []})
    answer = requests.post(
        f"{registry_url}/subjects/{topic}-elsewhere-value/versions",
        json={"schema": json.dumps(tagged)},
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        timeout=30,
    )
    answer.raise_for_status()
    foreign_id = answer.json()["id"]
    datum = with_fields(1)[5:] + zigzag(500_000_000) + b"\x02\x04\x06\x00"
    refused("foreign schema with a huge array", "foreign-schema-id", b"\x00" + struct.pack(">I", foreign_id) + datum)
    valid(2)

    refused("content type with a newline", "unsupported-content-type", with_fields(3, content_type="image/png\n"))
    valid(4)
    refused("customer id with a NUL byte", "forbidden-character", with_fields(5, customer_id="acme\x00corp"))
    valid(6)
    refused("source id of 8,000 characters", "field-too-long", with_fields(7, source_id="s" * 8000))
    valid(8)
    refused("created_at in the year 10000", "created-at-out-of-range", with_fields(9, created_at=253_402_300_800 * 1_000_000))
    valid(10)
    # Just under the data topic's limit (10 MiB + 16 KiB in this test), refused for a long field
    # its refusal would quote.
    refused(
        "record near the topic's limit quoting a long field",
        "unsupported-content-type",
        with_fields(11, content_type="x" * (10 * 1024 * 1024)),
    )
    valid(12)
    refused(
        "forged dead-letter headers",
        "malformed-checksum",
        with_fields(13, sha256="not a checksum"),
        headers=[
            ("imgstream.dlq.code", b"ok"),
            ("imgstream.dlq.original.topic", b"elsewhere"),
            ("imgstream.dlq.reason", b"the producer's own verdict"),
        ],
    )
    valid(14)
    # A header key given as bytes goes to librdkafka as it is: here, not UTF-8.
    refused(
        "header key that is not UTF-8",
        "malformed-checksum",
        with_fields(15, sha256="z" * 64),
        headers=[(b"bad-\xff-key", b"value")],
    )
    valid(16)
    print(json.dumps({"sent": sent}))


if __name__ == "__main__":
    scenario, bootstrap, topic, registry_url = sys.argv[1:5]
    if scenario == "codecs":
        codecs(bootstrap, topic, registry_url, int(sys.argv[5]))
    elif scenario == "hostile":
        hostile(bootstrap, topic, registry_url)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}: codecs or hostile")
