"""The scanner: walk the sources, compare with the backupdb, queue what changed."""
