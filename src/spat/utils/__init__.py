"""Level-0 helpers: seeding and RNG state, atomic file writes, JSON lines, environment record."""

from spat.utils.io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_text,
    fsync_path,
    read_jsonl,
    read_jsonl_lines,
)
from spat.utils.rng import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_path",
    "get_rng_state",
    "read_jsonl",
    "read_jsonl_lines",
    "seed_everything",
    "set_rng_state",
]
