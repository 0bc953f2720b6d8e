-- Run once by the postgres image when it initialises an empty data volume, as POSTGRES_USER
-- (imgstream), after it has created that role and the imgstream database: the schema registry
-- keeps its data in a database of its own, as in the local stack (scripts/stack/postgres.sh).
CREATE DATABASE registry;
