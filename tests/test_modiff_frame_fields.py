"""Mo-Diff's warp output: temporal smoothing on known signals, registration of a known motion, and
forecasts that stay in the first frame's range and are reproduced by their own fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.io.volume import Volume
from napari_deformdiff.core.modiff.frame_fields import (
    register_to_first,
    smooth_along_time,
    velocities_to_fields,
)
from napari_deformdiff.core.modiff import generate
from napari_deformdiff.core.events import run_to_end
from napari_deformdiff.core.modiff.generate import forecast_variants, generate_modiff
from napari_deformdiff.core.spatial import folding_ratio

from .modiff_helpers import first_frame, tiny_model


def test_smoothing_keeps_frame_0_and_low_order_signals():
    t = torch.linspace(0, 1, 10)[:, None]
    cubic = 2.0 + 3 * t - 4 * t**2 + t**3
    line = 2.0 + 3 * t
    torch.testing.assert_close(smooth_along_time(cubic, "poly"), cubic, atol=1e-5, rtol=0)
    torch.testing.assert_close(smooth_along_time(line, "gaussian", sigma=1.5), line, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one of poly, gaussian, monotone, none"):
        smooth_along_time(line, "spline")


def test_smoothing_removes_most_jitter_from_a_known_motion():
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, 12)[:, None].expand(12, 500)
    truth = 4 * (3 * t**2 - 2 * t**3)  # a smooth start-stop motion, 0 at frame 0
    jitter = 0.3 * torch.randn(truth.shape, generator=g)
    jitter[0] = 0
    noisy = truth + jitter
    for mode, most in (("poly", 0.6), ("gaussian", 0.75)):
        out = smooth_along_time(noisy, mode)
        assert torch.equal(out[0], noisy[0])
        error, before = float((out - truth).abs().mean()), float(jitter.abs().mean())
        assert error < most * before, (mode, error, before)
        # frame-to-frame changes: what the temporal error of the evaluation measures
        assert float((out.diff(dim=0) - truth.diff(dim=0)).abs().mean()) < 0.5 * float(
            (noisy.diff(dim=0) - truth.diff(dim=0)).abs().mean())


def test_monotone_keeps_one_growing_pattern_and_orders_a_jittery_one():
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(2, 6, 6, generator=g)
    t = torch.linspace(0, 1, 10)
    amplitude = 4 * (3 * t**2 - 2 * t**3)  # monotone start-stop
    truth = amplitude[:, None, None, None] * pattern
    torch.testing.assert_close(smooth_along_time(truth, "monotone"), truth, atol=1e-5, rtol=0)
    torch.testing.assert_close(smooth_along_time(-truth, "monotone"), -truth, atol=1e-5, rtol=0)  # sign-free
    noisy = truth + 0.3 * torch.randn(truth.shape, generator=g)
    noisy[0] = 0
    out = smooth_along_time(noisy, "monotone")
    assert torch.equal(out[0], noisy[0])
    assert torch.linalg.matrix_rank(out.reshape(10, -1).double(), rtol=1e-6) == 1  # one pattern
    a = out.reshape(10, -1) @ pattern.reshape(-1) / pattern.square().sum()
    assert bool((a.diff() >= -1e-5).all()) and float(a[-1]) == pytest.approx(4.0, abs=0.3)
    assert float((out.diff(dim=0) - truth.diff(dim=0)).abs().mean()) < 0.5 * float(
        (noisy.diff(dim=0) - truth.diff(dim=0)).abs().mean())
    # an amplitude that goes back and forth comes out non-decreasing, pooled where it dips
    back = torch.tensor([0.0, 1, 0.5, 2, 3, 2.5, 4, 4, 4, 4])[:, None, None, None] * pattern
    b = smooth_along_time(back, "monotone").reshape(10, -1) @ pattern.reshape(-1) / pattern.square().sum()
    torch.testing.assert_close(b, torch.tensor([0.0, 0.75, 0.75, 2, 2.75, 2.75, 4, 4, 4, 4]), atol=1e-4, rtol=0)


def test_registration_recovers_a_known_translation_without_folding():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    shifts = [0.0, 0.75, 1.5, 2.25]  # along x, voxels
    # pull convention: frame k(x) = frame 0(x + u), so the content moves by -u
    frames = torch.stack([torch.exp(-((yy - 16) ** 2 + (xx - 16 + s) ** 2) / 30.0) for s in shifts]) * 2 - 1
    v = run_to_end(register_to_first(frames, iterations=150))
    u = velocities_to_fields(v, (32, 32))
    assert v.shape == (4, 2, 8, 8) and float(u[0].abs().max()) == 0
    blob = ((yy - 16) ** 2 + (xx - 16) ** 2) < 36
    for k, s in enumerate(shifts):
        assert float(u[k, 1][blob].mean()) == pytest.approx(s, abs=0.25)
        assert float(u[k, 0][blob].abs().mean()) < 0.15
    assert float(folding_ratio(u).max()) == 0


def _forecast(first, **kw):
    return [e for e in generate_modiff(first, model=tiny_model(), frames=5, steps=4, seed=1, **kw)
            if isinstance(e, Frame)]


def test_warped_frames_stay_in_range_and_are_the_first_frame_pulled_by_their_fields():
    first = first_frame()
    frames = _forecast(first)
    images = np.stack([f.image for f in frames])
    np.testing.assert_array_equal(images[0], first.data)
    assert images.min() >= first.data.min() and images.max() <= first.data.max()
    fields = np.stack([f.field for f in frames])
    assert fields.shape == (5, 2, 40, 44) and np.abs(fields[0]).max() == 0
    assert np.abs(fields[1:]).max() > 0.05  # the forecast moves
    assert float(folding_ratio(torch.from_numpy(fields)).max()) == 0
    # an independent warp (scipy, linear, border): out(x) = first(x + u(x))
    grid = np.indices(first.data.shape).astype(np.float64)
    for k in range(1, 5):
        pulled = ndimage.map_coordinates(first.data.astype(np.float64), grid + fields[k], order=1, mode="nearest")
        np.testing.assert_allclose(images[k], pulled, atol=2e-5 * float(np.ptp(first.data)))
    assert all(f.info["output"] == "warp" and f.info["temporal"] == "monotone" for f in frames)


def test_integer_first_frame_gives_integer_values_in_its_range():
    first = first_frame()
    data = np.round(first.data * 1000).astype(np.uint16)
    frames = _forecast(Volume(data, first.geometry, False, "u16"))
    images = np.stack([f.image for f in frames])
    np.testing.assert_array_equal(images, np.round(images))
    assert images.min() >= data.min() and images.max() <= data.max()
    np.testing.assert_array_equal(images[0], data)


def test_additive_output_is_the_former_design_without_fields():
    first = first_frame()
    additive = _forecast(first, output="additive")
    warped = _forecast(first)
    assert all(f.field is None for f in additive)
    a, w = np.stack([f.image for f in additive]), np.stack([f.image for f in warped])
    np.testing.assert_array_equal(a[0], w[0])
    assert np.abs(a[1:] - w[1:]).max() > 1e-3


def test_output_variants_register_once_and_equal_the_streamed_forecasts(monkeypatch):
    first = first_frame()
    calls = []
    real = generate.register_to_first

    def counted(decoded, **kw):
        calls.append(1)
        return (yield from real(decoded, **kw))

    monkeypatch.setattr(generate, "register_to_first", counted)
    variants = {"poly": ("warp", "poly"), "monotone": ("warp", "monotone"), "none": ("warp", "none")}
    out = forecast_variants(first, frames=5, model=tiny_model(), variants=variants, steps=4, seed=1)
    assert len(calls) == 1
    for name, (output, temporal) in variants.items():
        streamed = np.stack([f.image for f in _forecast(first, temporal=temporal)])
        np.testing.assert_array_equal(out[name][0], streamed)
    assert np.abs(out["monotone"][0] - out["poly"][0]).max() > 0


def test_forecast_of_the_real_parasternal_echo_stays_in_range_with_fold_free_fields():
    from ._dicom_real import parasternal_path

    from napari_deformdiff.core.io import read_volume

    path = parasternal_path()
    if path is None:
        pytest.skip("parasternal echo not cached: run `python -m tests._dicom_real` to fetch Debian's octave-dicom")
    clip = read_volume(path, as_labels=False)
    assert clip.data.shape == (10, 430, 600) and clip.time_spacing == pytest.approx(0.076)
    data = np.ascontiguousarray(clip.data[0, :350, 125:475])
    from napari_deformdiff.core.geometry import Geometry

    first = Volume(data, Geometry((160 / 350, 160 / 350), (0.0, 0.0), np.eye(2)), False, "parasternal")
    frames = [e for e in generate_modiff(first, frames=7, steps=2, seed=0, temporal="monotone")
              if isinstance(e, Frame)]  # the bundled 2D weights
    images, fields = np.stack([f.image for f in frames]), np.stack([f.field for f in frames])
    np.testing.assert_array_equal(images[0], data)
    assert images.min() >= data.min() and images.max() <= data.max()
    assert fields.shape == (7, 2, 350, 350) and np.abs(fields[-1]).max() > 0.1
    assert float(folding_ratio(torch.from_numpy(fields)).max()) == 0
    # the displacement's size grows monotonically along the sequence (one pattern, growing amplitude)
    size = np.abs(fields).mean(axis=(1, 2, 3))
    assert np.all(np.diff(size) >= -1e-6 * size.max())
