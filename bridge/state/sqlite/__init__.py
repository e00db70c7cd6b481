"""The SQLite backend: one state file (WAL), its schema, queries and single-daemon lock."""
