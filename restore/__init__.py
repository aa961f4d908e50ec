"""Restore: choose a snapshot, rebuild files from the store, write them safely; attach; mirrors."""
