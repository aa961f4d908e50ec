"""The commit protocol: the root pointer and the backupdb exports it names."""
