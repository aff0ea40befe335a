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


def test_a_layer_s_controls_come_in_a_later_turn_and_it_is_selected_after_them(make_napari_viewer, qtbot):
    from napari.layers import Image, Labels
    from qtpy.QtWidgets import QApplication

    from napari_deformdiff._qt.gui_turns import TURNS
    from napari_deformdiff._qt.layer_insert import insert_layer

    viewer = make_napari_viewer()
    panel = viewer.window._qt_viewer.controls
    first = viewer.add_image(np.zeros((6, 7), np.float32), name="first")
    assert viewer.layers.selection.active is first
    image = insert_layer(viewer, Image(np.ones((6, 7), np.float32), name="image"), activate=True)
    labels = insert_layer(viewer, Labels(np.ones((6, 7), np.uint8), name="labels"), activate=False)
    assert [layer.name for layer in viewer.layers] == ["first", "image", "labels"]
    editing = {"polygon", "brush_stroke"}  # visible by default: napari makes their visuals at insertion
    overlay_visuals = viewer.window._qt_viewer.canvas._layer_overlay_to_visual
    assert not any(labels._overlays[k].visible for k in editing) and not overlay_visuals[labels]
    stand_ins = {layer: panel.widgets[layer] for layer in (image, labels)}
    assert all(type(w).__name__ == "QFrame" for w in stand_ins.values())  # no controls made yet
    assert viewer.layers.selection.active is first
    qtbot.waitUntil(lambda: TURNS.idle, timeout=5_000)
    QApplication.processEvents()
    assert type(panel.widgets[image]).__name__ == "QtImageControls"
    assert type(panel.widgets[labels]).__name__ == "QtLabelsControls"
    assert panel.count() == 1 + 3  # napari's empty panel and three layers' controls: no stand-in left
    assert viewer.layers.selection.active is image and panel.currentWidget() is panel.widgets[image]
    assert all(labels._overlays[k].visible for k in editing)
    assert {labels._overlays[k] for k in editing} <= set(overlay_visuals[labels])  # made in a later turn
    assert [la.name for la in viewer.layers.selection] == ["image"]


def test_a_layer_selected_or_removed_before_its_controls_exist(make_napari_viewer, qtbot):
    """napari's selection and removal handlers look the layer's panel up: the stand-in is there."""
    from napari.layers import Image

    from napari_deformdiff._qt.gui_turns import TURNS
    from napari_deformdiff._qt.layer_insert import insert_layer

    viewer = make_napari_viewer()
    panel = viewer.window._qt_viewer.controls
    kept = insert_layer(viewer, Image(np.ones((6, 7), np.float32), name="kept"), activate=False)
    gone = insert_layer(viewer, Image(np.ones((6, 7), np.float32), name="gone"), activate=True)
    viewer.layers.selection.active = kept  # the user clicks it at once: its stand-in shows
    assert panel.currentWidget() is panel.widgets[kept]
    viewer.layers.remove(gone)
    assert gone not in panel.widgets
    qtbot.waitUntil(lambda: TURNS.idle, timeout=5_000)
    assert [layer.name for layer in viewer.layers] == ["kept"]
    assert type(panel.widgets[kept]).__name__ == "QtImageControls" and panel.currentWidget() is panel.widgets[kept]
    assert viewer.layers.selection.active is kept  # the removed layer's selection was dropped
    assert len(panel.widgets) == 1 and panel.count() == 1 + 1



def test_during_a_run_unselected_layers_get_their_controls_when_it_ends_or_when_selected(make_napari_viewer, qtbot):
    """A layer's controls (20-50 ms) and a labels layer's editing overlays (40-80 ms) would lengthen
    the run's turns: they wait for the run's end, unless the user selects the layer meanwhile."""
    import threading

    from napari.layers import Image, Labels
    from qtpy.QtWidgets import QApplication

    from napari_deformdiff._qt.gui_turns import TURNS
    from napari_deformdiff._qt.layer_insert import insert_layer
    from napari_deformdiff._qt.stream_worker import FROZEN_HEAP, start_stream

    viewer = make_napari_viewer()
    panel = viewer.window._qt_viewer.controls
    release = threading.Event()

    def events():
        yield 0
        release.wait(20)
        yield 1

    handle = start_stream(events, description="run", on_event=lambda e: None, on_done=lambda: None,
                          progress_bar=False)
    qtbot.waitUntil(lambda: handle.handled >= 1, timeout=10_000)
    assert FROZEN_HEAP.runs == 1
    image = insert_layer(viewer, Image(np.ones((6, 7), np.float32), name="image"), activate=False)
    labels = insert_layer(viewer, Labels(np.ones((6, 7), np.uint8), name="labels"), activate=False)
    editing = {"polygon", "brush_stroke"}
    qtbot.waitUntil(lambda: TURNS.idle, timeout=5_000)
    QApplication.processEvents()
    assert type(panel.widgets[image]).__name__ == "QFrame" and type(panel.widgets[labels]).__name__ == "QFrame"
    assert not any(labels._overlays[k].visible for k in editing)

    viewer.layers.selection.active = image  # the user clicks it during the run
    qtbot.waitUntil(lambda: type(panel.widgets[image]).__name__ == "QtImageControls", timeout=5_000)
    assert panel.currentWidget() is panel.widgets[image]
    assert type(panel.widgets[labels]).__name__ == "QFrame"  # still waiting

    release.set()
    with qtbot.waitSignal(handle.finished, timeout=20_000):
        pass
    qtbot.waitUntil(lambda: TURNS.idle and type(panel.widgets[labels]).__name__ == "QtLabelsControls",
                    timeout=5_000)
    assert all(labels._overlays[k].visible for k in editing)
    assert panel.count() == 1 + 2  # napari's empty panel and the two layers' controls: no stand-in left
    assert viewer.layers.selection.active is image

def _run(qtbot, events, on_event=lambda e: None):
    from napari_deformdiff._qt.stream_worker import start_stream

    handle = start_stream(events, description="run", on_event=on_event, on_done=lambda: None, progress_bar=False)
    with qtbot.waitSignal(handle.finished, timeout=30_000):
        pass
    return handle


class _Cycle:
    def __init__(self):
        self.me = self
        self.data = np.zeros(1000)


def test_a_run_leaves_old_objects_frozen_and_frees_the_cyclic_garbage_it_made(make_napari_viewer, qtbot):
    """A full garbage collection walks napari's, Qt's and torch's ~350 000-600 000 objects (250-350 ms of
    GUI thread): they stay frozen during and after runs; after a run only its own objects are collected."""
    import gc
    import weakref

    from napari_deformdiff._qt import stream_worker

    viewer = make_napari_viewer()
    stream_worker.FROZEN_HEAP.watch(viewer)
    frozen_during, kept = [], []

    def events():
        for k in range(3):
            time.sleep(0.01)
            yield k

    def on_event(_event):
        frozen_during.append(gc.get_freeze_count())
        kept.append(_Cycle())  # made during the run, on the GUI thread
        gc.collect(1)  # ... and moved to the oldest generation: only a full pass frees it

    handle = _run(qtbot, events, on_event)
    made = [weakref.ref(c) for c in kept]
    kept.clear()  # cyclic garbage now
    assert len(frozen_during) == 3 and min(frozen_during) > 100_000
    assert not handle.is_running and all(ref() is not None for ref in made)
    qtbot.waitUntil(lambda: all(ref() is None for ref in made), timeout=10_000)  # collected once quiet
    assert gc.get_freeze_count() >= min(frozen_during)  # the old objects were never handed back


def test_a_layer_removed_after_a_run_is_freed(make_napari_viewer, qtbot):
    """A layer frozen by a run is held in reference cycles: removing it from the viewer starts one full
    collection in the next turn, which frees it and its data; the heap is frozen again after it."""
    import gc
    import weakref

    from napari_deformdiff._qt import stream_worker

    viewer = make_napari_viewer()
    stream_worker.FROZEN_HEAP.watch(viewer)
    layer = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="old")
    data = weakref.ref(layer.data.base if layer.data.base is not None else layer.data)
    gone = weakref.ref(layer)
    _run(qtbot, lambda: iter(range(2)))
    assert gc.get_freeze_count() > 100_000
    del layer
    viewer.layers.remove("old")
    assert gone() is not None  # napari's collection on removal walked only the unfrozen objects
    qtbot.waitUntil(lambda: gone() is None and data() is None, timeout=5_000)
    assert gc.get_freeze_count() > 100_000


def _cpu_ticks_by_thread() -> dict[int, tuple[int, int]]:
    """{thread id: (CPU ticks so far, niceness)} of this process, from /proc."""
    import os

    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12]), int(fields[16]))
    return out


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_every_thread_a_run_computes_in_runs_below_the_gui_thread(make_napari_viewer, qtbot):
    """torch's intra-op (OpenMP) threads included: each thread that starts a parallel region gets a
    pool of its own, made by (so with the niceness of) the niced worker thread."""
    import os
    import threading

    import torch

    from napari_deformdiff._qt.stream_worker import WORKER_NICENESS

    make_napari_viewer()
    gui = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    busy = {}

    def events():
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            a = torch.rand(512, 512)
            before = _cpu_ticks_by_thread()
            start, k = time.perf_counter(), 0
            while time.perf_counter() - start < 0.6:  # >= 5 ticks a thread however fast the CPU
                a @ a  # parallel regions
                if k % 20 == 0:
                    yield k
                k += 1
            after = _cpu_ticks_by_thread()
            busy.update({tid: nice for tid, (ticks, nice) in after.items()
                         if tid != os.getpid() and ticks - before.get(tid, (0, 0))[0] >= 5})
        finally:
            torch.set_num_threads(threads)

    _run(qtbot, events)
    assert len(busy) >= 2, busy  # the worker and its intra-op thread did the work
    assert set(busy.values()) == {min(19, gui + WORKER_NICENESS)}, busy
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == gui
