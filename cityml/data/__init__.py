"""The data stage: canonical trips (schema, validation, the parquet trip store), importers of real trip files and
the synthetic generator."""
