-- The image index: one row per stored image, written after its object and before its offset commit.
CREATE TABLE images (
    image_id        uuid        PRIMARY KEY,
    object_key      text        NOT NULL UNIQUE,
    bucket          text        NOT NULL,
    sha256          char(64)    NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes      bigint      NOT NULL CHECK (size_bytes > 0),
    width           integer     NOT NULL CHECK (width > 0),
    height          integer     NOT NULL CHECK (height > 0),
    content_type    text        NOT NULL,
    customer_id     text        NOT NULL,
    source_id       text        NOT NULL,
    created_at      timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL
);

-- Browsing: a customer's images by time, and everything by time.
CREATE INDEX images_customer_created_at ON images (customer_id, created_at DESC);
CREATE INDEX images_created_at ON images (created_at DESC);
-- Auditing: where each partition's indexed records end (imgstream verify).
CREATE INDEX images_kafka_position ON images (kafka_topic, kafka_partition, kafka_offset);
