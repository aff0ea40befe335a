"""The GUI side of a streamed generator (_qt/stream_worker.py): events handled one per event-loop turn,
never inside each other even when a handler runs a nested event loop (as napari's progress bar
does), in order, all of them before `finished`; a cancel keeps the events already made."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_deformdiff.core.events import Frame

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

    from napari_deformdiff._qt.stream_worker import start_stream

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

    handle = start_stream(lambda: _frames(25), description="test stream", on_event=on_event,
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
    from napari_deformdiff._qt.stream_worker import start_stream

    make_napari_viewer()
    seen = []
    handle = start_stream(lambda: _frames(200, delay=0.01), description="cancelled stream",
                          on_event=lambda e: seen.append(e.index), on_done=lambda: None)
    handle.yielded.connect(lambda e: handle.quit() if e.index == 2 else None)
    with qtbot.waitSignal(handle.finished, timeout=30_000):
        pass
    assert 3 <= len(seen) < 200 and seen == list(range(len(seen)))


def test_cancel_closes_the_core_generator_in_the_worker_thread(make_napari_viewer, qtbot):
    """A cancelled generator's clean-up (a DRDM export stops its own threads there) runs at once, off the GUI."""
    import threading

    from napari_deformdiff._qt.stream_worker import start_stream

    make_napari_viewer()
    closed_in = []

    def core():
        try:
            yield from _frames(200, delay=0.01)
        finally:
            closed_in.append(threading.current_thread())

    handle = start_stream(core, description="cancelled stream", on_event=lambda e: None, on_done=lambda: None)
    handle.yielded.connect(lambda e: handle.quit() if e.index == 2 else None)
    with qtbot.waitSignal(handle.finished, timeout=30_000):
        pass
    assert len(closed_in) == 1 and closed_in[0] is not threading.main_thread()


def test_a_runtime_error_in_the_worker_is_a_notification_and_the_stream_finishes(make_napari_viewer, qtbot,
                                                                                  monkeypatch):
    """superqt drops a worker's RuntimeError (torch raises those) without `finished`: it must still end."""
    from napari_deformdiff._qt.stream_worker import start_stream

    messages, seen, done = [], [], []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    make_napari_viewer()

    def failing():
        yield from _frames(2)
        raise RuntimeError("element 0 of tensors does not require grad")

    handle = start_stream(failing, description="failing stream", on_event=lambda e: seen.append(e.index),
                          on_done=lambda: done.append(True))
    with qtbot.waitSignal(handle.finished, timeout=30_000):
        pass
    assert seen == [0, 1] and done == [True]
    assert messages == ["failing stream failed: RuntimeError: element 0 of tensors does not require grad"]
