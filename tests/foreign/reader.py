"""A foreign reader for imgstream's tests: confluent-kafka-python 2.11.1's AvroDeserializer, with the
schema each record was written with fetched from the registry, as any consumer in the field reads
the data topic.

    reader.py BOOTSTRAP TOPIC REGISTRY_URL COUNT

Reads COUNT records from the beginning of TOPIC and prints one JSON object: for each record, its
image id, the length of its inline bytes and its reference (null for an inline image).
"""

import json
import sys
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    bootstrap, topic, registry_url, count = sys.argv[1:5]
    count = int(count)
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "foreign-reader-" + uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records = []
    deadline = time.time() + 60
    while len(records) < count and time.time() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        value = deserialize(
            message.value(), SerializationContext(topic, MessageField.VALUE)
        )
        records.append(
            {
                "image_id": str(value["image_id"]),
                "data_len": len(value["data"]),
                "sha256": value["sha256"],
                "reference": value.get("reference"),
            }
        )
    consumer.close()
    print(json.dumps({"records": records}))


if __name__ == "__main__":
    main()
