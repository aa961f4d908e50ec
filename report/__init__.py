"""The report: figures gathered from the backupdb, drawn for a terminal or as one HTML page."""
