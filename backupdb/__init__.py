"""The backupdb: the SQLite catalog (schema, queries, export) and the local queue and history."""
