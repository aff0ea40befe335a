"""Movies (MP4 or looping GIF) from RGB frames, with imageio (ffmpeg for MP4, Pillow for GIF)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputExistsError
from .atomic import atomic_output, split_suffix

__all__ = ["MOVIE_SUFFIXES", "MovieWriter", "pingpong", "write_movie"]

MOVIE_SUFFIXES = (".mp4", ".gif")


def pingpong(n: int) -> list[int]:
    """Frame order 0..n-1 then n-2..1: plays forward and back, loops without a repeated frame."""
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(range(n)) + list(range(n - 2, 0, -1))


class MovieWriter:
    """Write frames to an .mp4 (H.264, yuv420p) or .gif (looping forever) file.

    Use as a context manager; the file appears only when the block ends without an exception.
    Frames are uint8 (H, W, 3) or (H, W, 4) (alpha is dropped), all of one size. MP4 frames of odd
    height or width are padded by one replicated row/column (yuv420p needs even sizes); they are
    never resized. GIF delays are whole 1/100 s (at least 2: many viewers slow shorter ones down),
    and Pillow merges identical consecutive frames into one longer frame.
    """

    def __init__(self, path, fps: float = 10, overwrite: bool = False, *, quality: float = 8):
        self.path = Path(path)
        self.suffix = split_suffix(self.path.name)[1].lower()
        if self.suffix not in MOVIE_SUFFIXES:
            raise InputError(
                f"{self.path.name}: movies are written as {' or '.join(MOVIE_SUFFIXES)}; "
                f"got {self.suffix or 'no suffix'!r}."
            )
        fps = float(fps)
        if not math.isfinite(fps) or fps <= 0:
            raise InputError(f"frames per second must be a positive number, got {fps:g}.")
        if self.path.exists() and not overwrite:
            raise OutputExistsError(
                f"{self.path} already exists; choose another name or ask to overwrite it."
            )
        self.fps = fps
        self.overwrite = overwrite
        self.quality = quality
        self.count = 0
        self.frame_ms = 10 * max(2, round(100 / fps))
        self._size: tuple[int, int] | None = None
        self._output = None
        self._tmp: Path | None = None
        self._writer = None
        self._frames: list[np.ndarray] = []

    def __enter__(self) -> MovieWriter:
        if self._output is not None:
            raise RuntimeError("MovieWriter is already open")
        self._output = atomic_output(self.path, overwrite=self.overwrite)
        self._tmp = self._output.__enter__()
        return self

    def append(self, rgb) -> None:
        """Add one frame, uint8 (H, W, 3) or (H, W, 4)."""
        if self._output is None:
            raise RuntimeError("use MovieWriter in a with-block before appending frames")
        frame = np.asarray(rgb)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (3, 4):
            raise InputError(
                f"movie frames must be uint8 RGB or RGBA arrays (H, W, 3|4); frame {self.count} "
                f"has shape {frame.shape} and dtype {frame.dtype}."
            )
        frame = frame[..., :3]
        size = frame.shape[:2]
        if self._size is None:
            if min(size) < 1:
                raise InputError(f"movie frames must not be empty; got shape {frame.shape}.")
            self._size = size
        elif size != self._size:
            raise InputError(
                f"frame {self.count} is {size[0]}x{size[1]} pixels but the movie's frames are "
                f"{self._size[0]}x{self._size[1]}; all frames must have one size."
            )
        if self.suffix == ".gif":
            self._frames.append(np.ascontiguousarray(frame))
        else:
            pad = ((0, size[0] % 2), (0, size[1] % 2), (0, 0))
            if any(p[1] for p in pad):
                frame = np.pad(frame, pad, mode="edge")
            if self._writer is None:
                self._writer = self._open_mp4()
            self._writer.append_data(np.ascontiguousarray(frame))
        self.count += 1

    def _open_mp4(self):
        import imageio.v2 as iio2

        return iio2.get_writer(
            str(self._tmp),
            format="FFMPEG",
            mode="I",
            fps=self.fps,
            codec="libx264",
            pixelformat="yuv420p",
            quality=self.quality,
            macro_block_size=1,
            ffmpeg_log_level="error",
        )

    def _finish(self) -> None:
        if self.count == 0:
            raise InputError(f"{self.path.name}: no frames to write.")
        if self.suffix == ".gif":
            import imageio.v3 as iio

            iio.imwrite(
                self._tmp,
                np.stack(self._frames),
                plugin="pillow",
                extension=".gif",
                duration=self.frame_ms,
                loop=0,
            )
            self._frames = []
        else:
            writer, self._writer = self._writer, None
            writer.close()

    def _discard(self) -> None:
        self._frames = []
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the file is dropped anyway
                pass

    def __exit__(self, exc_type, exc, tb) -> bool:
        output, self._output = self._output, None
        if exc_type is None:
            try:
                self._finish()
            except BaseException as error:
                self._discard()
                output.__exit__(type(error), error, error.__traceback__)
                raise
        else:
            self._discard()
        return bool(output.__exit__(exc_type, exc, tb))


def write_movie(path, frames: Iterable, *, fps: float = 10, overwrite: bool = False) -> Path:
    """Write an iterable of uint8 RGB(A) frames as an .mp4 or .gif movie; returns the path."""
    with MovieWriter(path, fps=fps, overwrite=overwrite) as writer:
        for frame in frames:
            writer.append(frame)
    return Path(path)
