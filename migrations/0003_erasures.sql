-- Erasures: every request to forget images, kept for good: what was asked, by whom, when it
-- started and finished, and what it removed. The consumer reads this table before it uploads and
-- again inside its index transaction, so a record of an erased image is never stored again,
-- whoever replays it (a new group, an offset reset, `dlq replay`).
CREATE TABLE erasures (
    erasure_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- customer: one customer's images created before `cutoff`; images: the ids in `image_ids`;
    -- retention: every image created before `cutoff` (imgstream retain).
    kind            text        NOT NULL CHECK (kind IN ('customer', 'images', 'retention')),
    customer_id     text,
    cutoff          timestamptz,
    -- Whether the cut-off was asked for (--before) or is the time the request started.
    before_given    boolean     NOT NULL DEFAULT false,
    -- Sorted, without repeats: a second run of the same request finds its erasure by them.
    image_ids       uuid[],
    requested_by    text        NOT NULL,
    database_role   text        NOT NULL DEFAULT session_user,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    objects_removed bigint      NOT NULL DEFAULT 0,
    rows_removed    bigint      NOT NULL DEFAULT 0,
    CHECK (CASE kind
        WHEN 'customer' THEN customer_id IS NOT NULL AND cutoff IS NOT NULL AND image_ids IS NULL
        WHEN 'images' THEN customer_id IS NULL AND cutoff IS NULL AND image_ids IS NOT NULL
        ELSE customer_id IS NULL AND cutoff IS NOT NULL AND image_ids IS NULL
    END)
);
CREATE INDEX erasures_customer ON erasures (customer_id, cutoff) WHERE kind = 'customer';
CREATE INDEX erasures_retention ON erasures (cutoff) WHERE kind = 'retention';
CREATE INDEX erasures_image_ids ON erasures USING gin (image_ids) WHERE kind = 'images';

-- Objects a consumer wrote for a record it then found erased, inside its index transaction: the
-- consumer may not delete, so it leaves their keys here and the eraser removes them.
CREATE TABLE erasure_leftovers (
    object_key text        PRIMARY KEY,
    bucket     text        NOT NULL,
    found_at   timestamptz NOT NULL DEFAULT now()
);

-- Dead letters `dlq replay` has sent back, so a second run does not send them again.
CREATE TABLE dlq_replays (
    dlq_topic     text        NOT NULL,
    dlq_partition integer     NOT NULL,
    dlq_offset    bigint      NOT NULL,
    replayed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
