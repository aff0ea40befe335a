"""Mo-Diff forecasting: the streamed event protocol, geometry, determinism and clear errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from napari_deformdiff.core.ddm.weights import save_ddm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.events import Frame, RunProgress, SequencePreview
from napari_deformdiff.core.io.volume import Volume
from napari_deformdiff.core.modiff.frame_fields import ITERATIONS
from napari_deformdiff.core.modiff.generate import generate_modiff, refresh_steps
from napari_deformdiff.core.modiff.weights import load_modiff, save_modiff

from .ddm_helpers import tiny_model as tiny_ddm
from .modiff_helpers import first_frame, tiny_model


def run(first, **kw):
    kw.setdefault("model", tiny_model())
    kw.setdefault("frames", 5)
    kw.setdefault("steps", 6)
    return list(generate_modiff(first, **kw))


def test_events_stream_previews_then_frames_at_the_input_grid():
    first = first_frame()
    events = run(first, refreshes=4, preview_budget=None)
    kinds = [type(e).__name__ for e in events]
    previews = [e for e in events if isinstance(e, SequencePreview)]
    frames = [e for e in events if isinstance(e, Frame)]
    assert kinds.index("Frame") > max(i for i, k in enumerate(kinds) if k == "SequencePreview")
    assert 3 <= len(previews) <= 5
    assert [p.stage for p in previews][0] == "stage 1" and previews[-1].stage == "stage 2"
    assert previews[0].differential is not None and previews[0].differential.shape == (5, 40, 44)
    assert all(p.images.shape == (5, 40, 44) and p.images.dtype == np.float32 for p in previews)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4] and all(f.total == 5 for f in frames)
    assert all(f.image.shape == (40, 44) and np.isfinite(f.image).all() for f in frames)
    np.testing.assert_array_equal(frames[0].image, first.data)  # the first frame is the given one
    assert max(float(np.abs(f.image - first.data).max()) for f in frames[1:]) > 1e-3
    tracker, figures = RunProgress(), []
    for e in events:
        tracker.update(e)
        figures.append(tracker.done)
    assert figures == sorted(figures) and tracker.done == tracker.total == 1 + 6 + 6 + ITERATIONS + 5


def test_outside_the_model_grid_the_forecast_keeps_the_first_frame():
    # 80 x 80 at 3 mm = 240 mm; the tiny model grid covers 32 x 4 mm = 128 mm around the centre
    first = first_frame(shape=(80, 80), spacing=(3.0, 3.0))
    frames = [e.image for e in run(first) if isinstance(e, Frame)]
    change = np.abs(np.stack(frames) - first.data).max(axis=0)
    assert change[:10].max() == 0 and change[-10:].max() == 0 and change[:, :10].max() == 0
    assert change[30:50, 30:50].max() > 1e-3


def test_same_seed_same_forecast_other_seed_or_sampler_another():
    first, model = first_frame(), tiny_model()
    a = np.stack([e.image for e in run(first, model=model, seed=3) if isinstance(e, Frame)])
    b = np.stack([e.image for e in run(first, model=model, seed=3) if isinstance(e, Frame)])
    c = np.stack([e.image for e in run(first, model=model, seed=4) if isinstance(e, Frame)])
    d = np.stack([e.image for e in run(first, model=model, seed=3, sampler="ancestral") if isinstance(e, Frame)])
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4 and np.abs(a - d).max() > 1e-4


def test_slow_previews_are_skipped_but_never_change_the_forecast(monkeypatch):
    first, model = first_frame(), tiny_model()
    every = run(first, model=model, steps=12, refreshes=12, preview_budget=None)
    slow_decode = model.decode_video

    def decode(z):  # decoding a preview costs far more than sampling a step, also on a loaded CPU
        time.sleep(0.5)
        return slow_decode(z)

    monkeypatch.setattr(model, "decode_video", decode)
    budgeted = run(first, model=model, steps=12, refreshes=12, preview_budget=0.5)
    count = [sum(isinstance(e, SequencePreview) and e.stage == "stage 2" for e in ev) for ev in (every, budgeted)]
    # 12 refreshes: 3 in stage 1, 9 - the last step in stage 2; with the budget 1-3 of them on an idle CPU,
    # more on a loaded one (the budget is relative to the sampling time, which the load stretches too)
    assert count[0] == 8 and 1 <= count[1] < count[0]
    frames = [np.stack([e.image for e in ev if isinstance(e, Frame)]) for ev in (every, budgeted)]
    np.testing.assert_array_equal(frames[0], frames[1])


def test_the_final_frames_are_the_decoded_last_step():
    first = first_frame()
    events = run(first, steps=4, refreshes=8, preview_budget=None)
    last_preview = [e for e in events if isinstance(e, SequencePreview)][-1]
    frames = np.stack([e.image for e in events if isinstance(e, Frame)])
    # previews during stage 2 show x0 estimates; the frames come from the finished sample
    assert last_preview.stage == "stage 2" and last_preview.index < 7
    assert frames.shape == last_preview.images.shape


def test_refresh_steps_are_few_and_end_on_the_last_step():
    chosen = sorted(refresh_steps(100, 6))
    assert len(chosen) == 6 and chosen[-1] == 99
    assert all(15 <= b - a <= 18 for a, b in zip([-1, *chosen], chosen))  # evenly spread
    assert refresh_steps(3, 8) == {0, 1, 2}
    assert max(refresh_steps(50, 1)) == 49 and len(refresh_steps(50, 1)) == 1


def test_clear_errors_for_bad_requests(tmp_path):
    model = tiny_model()
    first = first_frame()
    with pytest.raises(InputError, match=r"outside the range this model was trained for \(3-6 frames"):
        run(first, model=model, frames=9)
    with pytest.raises(InputError, match="outside the range"):
        run(first, model=model, frames=2)
    volume = Volume(np.zeros((8, 40, 44), np.float32) + np.arange(8)[:, None, None], first.geometry.as_3d(),
                    False, "v")
    with pytest.raises(InputError, match="is 3D but the Mo-Diff model is 2D"):
        run(volume, model=model)
    labels = Volume(first.data.round(), first.geometry, True, "lab")
    with pytest.raises(InputError, match="label map"):
        run(labels, model=model)
    cine = Volume(np.stack([first.data] * 3), first.geometry, False, "cine")
    with pytest.raises(InputError, match="3 time points"):
        run(cine, model=model)
    with pytest.raises(InputError, match="sampler steps"):
        run(first, model=model, steps=0)
    ddm_file = save_ddm(tiny_ddm(2), tmp_path / "ddm.safetensors")
    with pytest.raises(InputError, match="not a Mo-Diff checkpoint"):
        list(generate_modiff(first, frames=4, weights=ddm_file))
    three_d = save_modiff(tiny_model(3), tmp_path / "m3.safetensors")
    with pytest.raises(InputError, match="holds a 3D Mo-Diff model but the image is 2D"):
        list(generate_modiff(first, frames=4, weights=three_d))


def test_3d_forecast_and_weights_round_trip(tmp_path):
    model = tiny_model(3, seed=2)
    path = save_modiff(model, tmp_path / "m.safetensors", note="x")
    loaded, meta = load_modiff(path, ndims=3)
    assert meta["note"] == "x" and loaded.config == model.config
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    from napari_deformdiff.core.geometry import Geometry

    rng = np.random.default_rng(0)
    first = Volume(rng.random((10, 20, 18)).astype(np.float32), Geometry((9.0, 6.0, 7.0), (0, 0, 0), np.eye(3)),
                   False, "v")
    frames = [e.image for e in generate_modiff(first, frames=4, steps=3, model=loaded) if isinstance(e, Frame)]
    assert len(frames) == 4 and frames[3].shape == (10, 20, 18)
    np.testing.assert_array_equal(frames[0], first.data)
