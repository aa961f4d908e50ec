"""Maintenance: retention (forget), prune, compaction of chains and packs, grid leases."""
