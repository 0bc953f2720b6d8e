#!/usr/bin/env bash
# serve's own login role, created on the database's first start (docker-entrypoint-initdb.d).
# `imgstream setup` (DATABASE_SERVE_ROLE) then grants it SELECT on images and nothing else.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -v password="$SERVE_DB_PASSWORD" --username "$POSTGRES_USER" --dbname imgstream <<'SQL'
CREATE ROLE imgstream_serve LOGIN PASSWORD :'password';
SQL
