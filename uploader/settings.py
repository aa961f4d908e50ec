"""The uploader's tunables, with the defaults the design doc argues for."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class UploadSettings:
    pack_size: int = 16 << 20  # a spool pack is put to the store when it reaches this
    piece_size: int = 4 << 20  # files and deltas are cut into blobs of at most this
    max_chain: int = 16  # deltas between a version and its keyframe
    max_chain_ratio: float = 0.5  # deltas on a chain may sum to this fraction of the file
    delta_min_size: int = 64 << 10  # smaller files are always stored whole, with no signature
    block_max: int = 2048  # largest librsync block; smaller blocks, smaller deltas
    zstd_level: int = 2  # level 1's time, 2% fewer bytes on source trees (docs/design.md)
    full_export_every: int = 16  # backupdb: a full export after this many deltas

    def takes_deltas(self, size: int) -> bool:
        """Whether a file of `size` bytes gets a signature and may be stored as a delta."""
        return size >= self.delta_min_size

    @classmethod
    def from_mapping(cls, values: dict[str, object]) -> UploadSettings:
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise KeyError(sorted(unknown)[0])
        for name, value in values.items():
            # A wrong type or range would surface as a traceback mid-upload: refuse both here
            # (TypeError and ValueError are usage errors to config.py).
            is_float = known[name] in ("float", float)
            if isinstance(value, bool) or not isinstance(value, (int, float) if is_float else int):
                raise TypeError(f"{name} must be {'a number' if is_float else 'an integer'}")
            low, high = _RANGES[name]
            if not low <= value <= high or (name == "max_chain_ratio" and value <= 0):
                raise ValueError(f"{name} must be {_span(name, low, high)}")
        return cls(**values)  # type: ignore[arg-type]


# What each setting may be. Outside these a value would crash an upload midway (a zstd level of
# 99), store files without their bytes (a piece size of 0) or put a pack in memory per file.
_RANGES: dict[str, tuple[float, float]] = {
    "pack_size": (4 << 10, 1 << 30),
    "piece_size": (4 << 10, 256 << 20),
    "max_chain": (1, 1000),
    "max_chain_ratio": (0, 100),  # above 0
    "delta_min_size": (0, 1 << 40),
    "block_max": (64, 1 << 20),
    "zstd_level": (1, 22),
    "full_export_every": (0, 10000),
}


def _span(name: str, low: float, high: float) -> str:
    if name == "max_chain_ratio":
        return f"above 0 and at most {high:g}"
    return f"from {low:,} to {high:,}" + (" (bytes)" if name.endswith("size") else "")
