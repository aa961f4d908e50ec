"""The uploader: read each queued entry once, store contents as keyframes or deltas, record."""
