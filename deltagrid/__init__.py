"""deltagrid: forward-delta backups of a directory tree to a directory or a Tahoe-LAFS grid."""

__version__ = "0.1.0"
