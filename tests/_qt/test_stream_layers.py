"""Growing 4D layers of a streamed generator (_qt/stream_layers.py): frames copied into their buffers
in the worker, the layers re-assigned views so the time axis grows frame by frame."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_deformdiff.core.geometry import Geometry

from .test_stream_worker import _frames

pytestmark = pytest.mark.gui


def test_frames_are_copied_in_the_worker_and_the_layers_show_views(make_napari_viewer, qtbot):
    from napari_deformdiff._qt.stream_layers import FrameBuffers, GrowingSequence
    from napari_deformdiff._qt.stream_worker import start_stream

    viewer = make_napari_viewer()
    buffers = FrameBuffers()
    copied_in = []
    gui = threading.get_ident()

    def prepare(event):
        copied_in.append(threading.get_ident())
        return buffers.stage(event)

    put, gui_copies = buffers.put, []

    def watched_put(frame):
        if threading.get_ident() == gui:
            gui_copies.append(frame.index)
        put(frame)

    buffers.put = watched_put
    sequence = GrowingSequence(viewer, name="staged", geometry=Geometry((1.0, 2.0), (0.0, 0.0), np.eye(2)),
                               total=8, with_labels=True, buffers=buffers)
    counts = []
    handle = start_stream(lambda: _frames(8), description="staged", prepare=prepare,
                          on_event=sequence.add, on_done=sequence.flush)
    handle.yielded.connect(lambda e: counts.append(sequence.image_layer.data.shape[0]))
    with qtbot.waitSignal(handle.finished, timeout=30_000):
        pass
    assert counts == list(range(1, 9))  # the time axis grew frame by frame
    assert len(copied_in) == 8 and gui not in copied_in and gui_copies == []
    assert np.shares_memory(sequence.image_layer.data, buffers.images)  # views, not copies
    np.testing.assert_array_equal(sequence.image_layer.data[:, 0, 0], np.arange(8))
    assert sequence.labels_layer.data.shape == (8, 6, 5) and sequence.labels_layer.data.dtype == np.uint8
    np.testing.assert_array_equal(buffers.fields[5], -5)


def test_a_sequence_without_staging_copies_itself(make_napari_viewer):
    from napari_deformdiff._qt.stream_layers import GrowingSequence

    viewer = make_napari_viewer()
    sequence = GrowingSequence(viewer, name="plain", geometry=Geometry((1.0, 1.0), (0.0, 0.0), np.eye(2)),
                               total=3, with_labels=True)
    for frame in _frames(3):
        sequence.add(frame)
    assert sequence.labels_layer is None  # made in an event-loop turn of its own, or by flush()
    sequence.flush()
    assert sequence.image_layer.data.shape == (3, 6, 5) and sequence.labels_layer.data.shape == (3, 6, 5)
    np.testing.assert_array_equal(sequence.image_layer.data[:, 1, 1], [0, 1, 2])


def test_an_empty_viewer_gets_its_time_slider_when_the_run_starts(make_napari_viewer):
    """napari makes the sliders for new dimensions: at the run's start, not in the turn of its first layer."""
    from napari_deformdiff._qt.stream_layers import GrowingSequence

    viewer = make_napari_viewer()
    sliders = viewer.window._qt_viewer.dims
    assert viewer.dims.ndim == 2 and sliders.nsliders == 2
    sequence = GrowingSequence(viewer, name="plain", geometry=Geometry((1.0, 1.0), (0.0, 0.0), np.eye(2)),
                               total=3)
    assert viewer.dims.ndim == 3 and sliders.nsliders == 3  # before any frame
    for frame in _frames(3):
        sequence.add(frame)
    assert sequence.image_layer.data.shape == (3, 6, 5) and viewer.dims.ndim == 3
    assert viewer.dims.range[0].stop == 2  # the time axis covers the 3 frames

    other = make_napari_viewer()
    other.add_image(np.zeros((6, 5), np.float32))
    GrowingSequence(other, name="plain", geometry=Geometry((1.0, 1.0), (0.0, 0.0), np.eye(2)), total=3)
    assert other.dims.ndim == 2  # a viewer with layers is left to napari (it fits the view to them)


def test_frames_behind_the_slider_grow_the_time_axis_without_repainting_the_frame_shown(make_napari_viewer):
    """The slider stays on frame 1 while frames 2..5 arrive: the layers' time extent grows (the slider's
    range with it), but no set_data event (napari's texture upload and repaint) fires until the frame
    under the slider itself arrives again."""
    from napari_deformdiff._qt.stream_layers import GrowingSequence

    viewer = make_napari_viewer()
    sequence = GrowingSequence(viewer, name="plain", geometry=Geometry((1.0, 1.0), (0.0, 0.0), np.eye(2)),
                               total=6, with_labels=True)
    frames = list(_frames(6))
    for frame in frames[:2]:
        sequence.add(frame)
    sequence.flush()
    viewer.dims.set_current_step(0, 1)
    redrawn = {"image": 0, "labels": 0}
    sequence.image_layer.events.set_data.connect(lambda e: redrawn.__setitem__("image", redrawn["image"] + 1))
    sequence.labels_layer.events.set_data.connect(lambda e: redrawn.__setitem__("labels", redrawn["labels"] + 1))
    for frame in frames[2:5]:
        sequence.add(frame)
    assert redrawn == {"image": 0, "labels": 0}
    assert sequence.image_layer.data.shape[0] == 5 and sequence.labels_layer.data.shape[0] == 5
    assert viewer.dims.range[0].stop == 4  # the slider reaches the new frames
    np.testing.assert_array_equal(sequence.image_layer._slice.image.view, frames[1].image)  # still frame 1

    viewer.dims.set_current_step(0, 4)
    np.testing.assert_array_equal(sequence.image_layer._slice.image.view, frames[4].image)
    redrawn.update(image=0, labels=0)  # napari's own redraw for the step change
    sequence.add(frames[4])  # the frame shown, again (recomputed): shown anew
    assert redrawn == {"image": 1, "labels": 1}
