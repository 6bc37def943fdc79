-- Run once by the postgres image, on an empty data volume, as POSTGRES_USER (docker-compose.yml).
-- POSTGRES_DB makes the `cityml` database (drift and accuracy history, CITYML_METADATA_URL); these are
-- the other two. One role owns all three: a separate role per database would be one more secret each.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
