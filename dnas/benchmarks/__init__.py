"""Benchmark tables: architectures and their measured metrics (NAS-Bench-201 built in)."""

from dnas.benchmarks.tables import (
    ENV_VAR, NATS_COLUMNS, Table, TableError, UnknownTableError, canonical_nb201, from_nats_bench,
    get_table, join, load_csv, load_nb201, register_table, table_names, unregister_table,
    write_csv)

__all__ = ["ENV_VAR", "NATS_COLUMNS", "Table", "TableError", "UnknownTableError",
           "canonical_nb201", "from_nats_bench", "get_table", "join", "load_csv", "load_nb201",
           "register_table", "table_names", "unregister_table", "write_csv"]
