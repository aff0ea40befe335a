"""Movies: frame count, size, content and GIF timing, decoded back with imageio."""

from __future__ import annotations

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest

from napari_deformdiff.core.errors import InputError, OutputExistsError
from napari_deformdiff.core.io.cine import MovieWriter, pingpong, write_movie

N_FRAMES = 7


def _frames(height: int, width: int = 64, n: int = N_FRAMES, alpha: bool = False) -> list[np.ndarray]:
    """A bright 10x10 square moving left to right over a dim gradient."""
    base = np.zeros((height, width, 4 if alpha else 3), np.uint8)
    base[..., :3] = (np.arange(width) * 40 // width)[None, :, None].astype(np.uint8)
    if alpha:
        base[..., 3] = 128
    frames = []
    for t in range(n):
        f = base.copy()
        x0 = 4 + t * (width - 18) // (n - 1)
        f[height // 2 - 5 : height // 2 + 5, x0 : x0 + 10, :3] = (250, 220, 40)
        frames.append(f)
    return frames


def _centroid_x(frame: np.ndarray) -> float:
    bright = frame[..., 0].astype(np.float64) > 150
    assert bright.sum() > 50  # the square survived encoding
    return float(np.nonzero(bright)[1].mean())


def _expected_x(t: int, width: int = 64) -> float:
    return 4 + t * (width - 18) // (N_FRAMES - 1) + 4.5


def _decode_mp4(path) -> list[np.ndarray]:
    reader = iio2.get_reader(path, format="FFMPEG")
    try:
        return [np.asarray(f) for f in reader]
    finally:
        reader.close()


@pytest.mark.parametrize("height", [50, 51])
def test_mp4(tmp_path, height):
    path = tmp_path / "cine.mp4"
    with MovieWriter(path, fps=10) as mw:
        for f in _frames(height, alpha=height == 51):
            mw.append(f)
        assert mw.count == N_FRAMES
    decoded = _decode_mp4(path)
    assert len(decoded) == N_FRAMES
    # yuv420p needs even sizes: 51 rows are padded to 52 (a replicated last row), never resized
    assert decoded[0].shape == (height + height % 2, 64, 3)
    xs = [_centroid_x(f) for f in decoded]
    assert np.all(np.diff(xs) > 4)
    np.testing.assert_allclose(xs, [_expected_x(t) for t in range(N_FRAMES)], atol=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cine.mp4"]


@pytest.mark.parametrize("fps", [10, 4, 15])
def test_gif(tmp_path, fps):
    path = write_movie(tmp_path / "cine.gif", _frames(51), fps=fps)
    frames = iio.imread(path, index=None)
    assert frames.shape[:3] == (N_FRAMES, 51, 64)
    xs = [_centroid_x(f) for f in frames]
    np.testing.assert_allclose(xs, [_expected_x(t) for t in range(N_FRAMES)], atol=0.5)
    meta = iio.immeta(path)
    assert meta["loop"] == 0  # loop forever
    assert abs(meta["duration"] - 1000 / fps) <= 5  # GIF stores 1/100 s
    for t in range(N_FRAMES):
        assert iio.immeta(path, index=t)["duration"] == meta["duration"]


def test_exception_leaves_nothing(tmp_path):
    for name in ("a.mp4", "a.gif"):
        with pytest.raises(RuntimeError, match="boom"):
            with MovieWriter(tmp_path / name) as mw:
                for f in _frames(50)[:3]:
                    mw.append(f)
                raise RuntimeError("boom")
    with pytest.raises(InputError, match="frame 2 is 40x64"):
        write_movie(tmp_path / "b.mp4", _frames(50)[:2] + _frames(40)[:1])
    with pytest.raises(InputError, match="no frames"):
        write_movie(tmp_path / "c.gif", [])
    with pytest.raises(InputError, match="uint8"):
        write_movie(tmp_path / "d.gif", [np.zeros((8, 8, 3), np.float32)])
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_and_bad_names(tmp_path):
    path = tmp_path / "m.gif"
    write_movie(path, _frames(20, 32, n=3))
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        MovieWriter(path)
    with pytest.raises(OutputExistsError):
        write_movie(path, _frames(20, 32, n=4))
    assert path.read_bytes() == before
    write_movie(path, _frames(20, 32, n=4), overwrite=True)
    assert iio.imread(path, index=None).shape[0] == 4
    with pytest.raises(InputError, match=".avi"):
        MovieWriter(tmp_path / "m.avi")
    with pytest.raises(InputError, match="positive"):
        MovieWriter(tmp_path / "m.mp4", fps=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gif"]


def test_pingpong():
    assert pingpong(0) == []
    assert pingpong(1) == [0]
    assert pingpong(2) == [0, 1]
    assert pingpong(3) == [0, 1, 2, 1]
    assert pingpong(5) == [0, 1, 2, 3, 4, 3, 2, 1]
    order = pingpong(6)
    assert len(order) == 10 and order[-1] != order[0]  # loops without repeating frame 0
