"""One GUI task per event-loop turn across every stream, overlay set and plot (_qt/gui_turns.py), and
layers a run adds beside the user's without taking the selection (_qt/layer_insert.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from .gui_helpers import stream_phantom_with_overlays

pytestmark = pytest.mark.gui


def _ticking(qtbot):
    """A 2 ms QTimer counting its ticks: the event loop's turns between tasks."""
    from qtpy.QtCore import QTimer

    ticks = [0]
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
    timer.start(2)
    return timer, ticks


def test_tasks_due_together_run_in_turns_of_their_own(make_napari_viewer, qtbot):
    """Five 30 ms tasks submitted at once (as a stream's event, an overlay update, a progress
    update and a plot redraw can be): a timer ticks between any two, and they keep their order."""
    from napari_deformdiff._qt.gui_turns import SPACING_MS, TURNS

    make_napari_viewer()
    timer, ticks = _ticking(qtbot)
    ran = []  # (task, ticks when it started, start, end)

    def task(k):
        def run():
            start = time.perf_counter()
            time.sleep(0.03)
            ran.append((k, ticks[0], start, time.perf_counter()))
        return run

    for k in range(5):
        TURNS.submit(task(k))
    qtbot.waitUntil(lambda: len(ran) == 5, timeout=5_000)
    timer.stop()
    assert [r[0] for r in ran] == list(range(5))
    seen = [r[1] for r in ran]
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False)), seen  # the loop turned in between
    pauses = [b[2] - a[3] for a, b in zip(ran, ran[1:], strict=False)]
    assert min(pauses) >= SPACING_MS / 1000 * 0.9, pauses  # each started SPACING_MS after the last ended


def test_a_task_submitted_again_before_it_ran_runs_once(make_napari_viewer, qtbot):
    from napari_deformdiff._qt.gui_turns import TURNS

    make_napari_viewer()
    count, other = [0], []

    def task():
        count[0] += 1

    for _ in range(3):
        TURNS.submit(task)
    TURNS.submit(lambda: other.append(1))
    qtbot.waitUntil(lambda: other == [1], timeout=5_000)
    qtbot.wait(50)
    assert count[0] == 1


def test_no_task_runs_inside_a_nested_event_loop(make_napari_viewer, qtbot):
    """napari's progress bar runs processEvents on every update: a task due then waits for the outer loop."""
    from qtpy.QtWidgets import QApplication

    from napari_deformdiff._qt.gui_turns import TURNS, nested_event_loop

    make_napari_viewer()
    ran = []
    TURNS.submit(lambda: ran.append("outer"))
    with nested_event_loop():
        end = time.perf_counter() + 0.1
        while time.perf_counter() < end:
            QApplication.processEvents()
        assert ran == []
    qtbot.waitUntil(lambda: ran == ["outer"], timeout=5_000)


def test_a_task_that_runs_the_event_loop_holds_the_others_back(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_deformdiff._qt.gui_turns import TURNS

    make_napari_viewer()
    log = []

    def first():
        log.append("first starts")
        end = time.perf_counter() + 0.1
        while time.perf_counter() < end:
            QApplication.processEvents()  # unmarked nested loop (a dialog, a napari call)
        log.append("first ends")

    TURNS.submit(first)
    TURNS.submit(lambda: log.append("second"))
    qtbot.waitUntil(lambda: "second" in log, timeout=5_000)
    assert log == ["first starts", "first ends", "second"]


def test_overlay_and_labels_layers_leave_the_selection_alone(make_napari_viewer, qtbot):
    """The generated image is selected when it appears (napari's usual); its labels and the overlays
    are added without taking the selection. Names and order of the layers are as before."""
    viewer = make_napari_viewer()
    phantom, inspect = stream_phantom_with_overlays(viewer, qtbot, 4, magnitude=True)
    qtbot.waitUntil(lambda: len(inspect.overlays.layers) == 5, timeout=60_000)
    image = phantom.sequence.image_layer
    name = image.name  # (the widget holds a proxy of the layer: compared by name)
    assert viewer.layers.selection.active.name == name and [la.name for la in viewer.layers.selection] == [name]
    assert [layer.name for layer in viewer.layers] == [
        name, f"{name} labels", f"{name} det J", f"{name} folding (det <= 0)", f"{name} |u| mm",
        f"{name} deformed grid", f"{name} vectors"]
    assert all(layer.visible for layer in viewer.layers)
    assert viewer.layers[f"{name} labels"].data.shape == (4, *image.data.shape[1:])
    np.testing.assert_array_equal(viewer.layers[f"{name} labels"].data, phantom.sequence.buffers.labels[:4])


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_stream_workers_run_below_the_gui_thread(make_napari_viewer, qtbot):
    import os
    import threading

    from napari_deformdiff._qt.stream_worker import WORKER_NICENESS, start_stream

    make_napari_viewer()
    seen = []

    def events():
        for k in range(3):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            yield k

    gui = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    handle = start_stream(events, description="niceness", on_event=lambda e: None, on_done=lambda: None,
                          progress_bar=False)
    with qtbot.waitSignal(handle.finished, timeout=30_000):
        pass
    assert seen == [min(19, gui + WORKER_NICENESS)] * 3
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == gui  # the GUI thread's is untouched


def test_objects_older_than_a_run_are_left_out_of_full_collections_until_it_ends(make_napari_viewer, qtbot):
    """A full garbage collection walked napari's, Qt's and torch's ~500 000 objects (250 ms of GUI
    thread, five per run): during a run they are frozen, and handed back when it ends."""
    import gc

    from napari_deformdiff._qt.stream_worker import start_stream

    make_napari_viewer()
    qtbot.waitUntil(lambda: gc.get_freeze_count() == 0, timeout=5_000)  # an earlier test's runs have thawed
    frozen_during = []

    def events():
        for k in range(3):
            time.sleep(0.01)
            yield k

    handle = start_stream(events, description="frozen", on_event=lambda e: frozen_during.append(gc.get_freeze_count()),
                          on_done=lambda: None, progress_bar=False)
    assert gc.get_freeze_count() > 100_000
    second = start_stream(lambda: iter(range(2)), description="second", on_event=lambda e: None,
                          on_done=lambda: None, progress_bar=False)
    with qtbot.waitSignal(second.finished, timeout=30_000):
        pass
    if handle.is_running:
        assert gc.get_freeze_count() > 100_000  # the first run still holds them
        with qtbot.waitSignal(handle.finished, timeout=30_000):
            pass
    assert len(frozen_during) == 3 and min(frozen_during) > 100_000
    qtbot.waitUntil(lambda: gc.get_freeze_count() == 0, timeout=5_000)  # every run ended: collectable again
