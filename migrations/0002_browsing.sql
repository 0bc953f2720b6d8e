-- Browsing (imgstream serve): keyset pagination newest first, by (created_at, image_id), alone or
-- within one customer or one source. The image id breaks ties between images created in the same
-- microsecond, so a page boundary is exact. These replace the created_at-only indexes of 0001.
CREATE INDEX images_newest ON images (created_at DESC, image_id DESC);
CREATE INDEX images_customer_newest ON images (customer_id, created_at DESC, image_id DESC);
CREATE INDEX images_source_newest ON images (source_id, created_at DESC, image_id DESC);
DROP INDEX images_customer_created_at;
DROP INDEX images_created_at;
-- The pipeline page's recent throughput: rows stored per minute.
CREATE INDEX images_stored_at ON images (stored_at);
