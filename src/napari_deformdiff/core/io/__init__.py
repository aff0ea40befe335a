"""Reading and writing medical volumes with their geometry (nibabel and SimpleITK)."""

from .dispatch import (
    READ_SUFFIXES,
    WRITE_SUFFIXES,
    can_read,
    read_path,
    read_volume,
    write_volume,
)
from .volume import Volume

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "Volume",
    "can_read",
    "read_path",
    "read_volume",
    "write_volume",
]
