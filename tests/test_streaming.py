"""The GUI side of a streamed generator (_qt/streaming.py): events handled one per event-loop turn,
never inside each other even when a handler runs a nested event loop (as napari's progress bar
does), in order, all of them before `finished`; frames copied into their buffers in the worker."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.geometry import Geometry

pytestmark = pytest.mark.gui


def _frames(n, shape=(6, 5), delay=0.0):
    for k in range(n):
        if delay:
            time.sleep(delay)
        image = np.full(shape, k, np.float32)
        field = np.full((2, *shape), -k, np.float32)
        yield Frame(k, n, image, field, (np.arange(np.prod(shape)).reshape(shape) % 3).astype(np.uint8), {})


def test_events_are_handled_one_at_a_time_in_order_even_under_nested_event_loops(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_deformdiff._qt.streaming import start_stream

    make_napari_viewer()
    depth, seen, max_depth, done = [0], [], [0], []

    def on_event(event):
        depth[0] += 1
        max_depth[0] = max(max_depth[0], depth[0])
        seen.append(event.index)
        QApplication.processEvents()  # what napari's progress bar does on every update
        time.sleep(0.005)
        QApplication.processEvents()
        depth[0] -= 1

    handle = start_stream(lambda: _frames(25), total=25, description="test stream", on_event=on_event,
                          on_done=lambda: done.append(len(seen)))
    after = []
    handle.yielded.connect(lambda e: after.append(e.index))
    with qtbot.waitSignal(handle.finished, timeout=30_000):
        pass
    assert seen == list(range(25)) and after == seen
    assert max_depth[0] == 1  # no event was handled inside another's nested event loop
    assert done == [25]  # on_done ran once, after the last event, before `finished`
    assert not handle.is_running


def test_cancel_keeps_the_events_already_made_and_finishes(make_napari_viewer, qtbot):
    from napari_deformdiff._qt.streaming import start_stream

    make_napari_viewer()
    seen = []
    handle = start_stream(lambda: _frames(200, delay=0.01), total=200, description="cancelled stream",
                          on_event=lambda e: seen.append(e.index), on_done=lambda: None)
    handle.yielded.connect(lambda e: handle.quit() if e.index == 2 else None)
    with qtbot.waitSignal(handle.finished, timeout=30_000):
        pass
    assert 3 <= len(seen) < 200 and seen == list(range(len(seen)))


def test_frames_are_copied_in_the_worker_and_the_layers_show_views(make_napari_viewer, qtbot):
    from napari_deformdiff._qt.streaming import (
        FrameBuffers,
        GrowingSequence,
        start_stream,
    )

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
    handle = start_stream(lambda: _frames(8), total=8, description="staged", prepare=prepare,
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
    from napari_deformdiff._qt.streaming import GrowingSequence

    viewer = make_napari_viewer()
    sequence = GrowingSequence(viewer, name="plain", geometry=Geometry((1.0, 1.0), (0.0, 0.0), np.eye(2)),
                               total=3, with_labels=True)
    for frame in _frames(3):
        sequence.add(frame)
    assert sequence.labels_layer is None  # made in an event-loop turn of its own, or by flush()
    sequence.flush()
    assert sequence.image_layer.data.shape == (3, 6, 5) and sequence.labels_layer.data.shape == (3, 6, 5)
    np.testing.assert_array_equal(sequence.image_layer.data[:, 1, 1], [0, 1, 2])
