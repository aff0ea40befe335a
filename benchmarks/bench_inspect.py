"""Inspect-deformation benchmark: a real napari viewer, 16 frames of 128 x 128 x 32, all overlays.

Measures, each with a baseline taken in the same process:
- time to change the time step and repaint (median, max): with all overlays vs image + labels;
- time to build the overlays of one frame, and the Jacobian alone (vs numpy.gradient);
- the longest main-thread (event-loop) gap while the phantom generator streams 16 frames and the
  overlays follow it, with 7 layers in the viewer (the stream's) and with 20 (13 other 4D layers),
  vs the same measurement with an idle viewer; over the whole run ("including layer creation":
  napari creating the stream's 7 layers) and once all layers exist. With each gap, the CPU time
  the GUI thread itself spent in it: the rest of a gap is waiting for a CPU (other processes, the
  workers) or for the GIL, so on a loaded machine compare that column, and the load printed;
- the Generate click itself (phantom.start(), before the run: for an empty viewer it makes the
  time slider);
- one synchronous canvas repaint with all of a run's layers present and no run (napari and the
  OpenGL renderer alone: under Xvfb, Mesa's llvmpipe draws in software): the floor of any gap in
  which a new frame is shown;
- the longest gap in the 3 s after each run (older objects stay frozen: only the run's own are
  collected), and the threads other than the GUI thread that computed during it, with their
  niceness (llvmpipe's are Mesa's software renderer, painting for the GUI thread);
- removing all layers (viewer.layers.clear()) and the one full garbage collection a turn later.
Targets (issue 5): step change <= 150 ms median with vectors at the default stride, Jacobian of
one frame <= 50 ms, no event-loop gap over 100 ms during a run (issue 16: layer creation
included, with 7 and with 20 layers).

Usage (needs a display; headless: xvfb-run -a):
    xvfb-run -a .venv/bin/python benchmarks/bench_inspect.py
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
from _table import print_table  # benchmarks/ is on sys.path when a script here runs

FRAMES = 16


def cpu_ticks_by_thread() -> dict[int, tuple[int, int, str]]:
    """{thread id: (CPU ticks so far, niceness, name)} of this process (Linux /proc; else empty)."""
    out = {}
    if not os.path.isdir("/proc/self/task"):
        return out
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12]), int(fields[16]), name)
    return out


def main() -> None:
    import napari
    import torch
    from napari.layers import Layer
    from qtpy.QtCore import QElapsedTimer, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_deformdiff._layers import attach_field, volume_to_layer_data
    from napari_deformdiff.core import spatial
    from napari_deformdiff.core.inspect.overlays import frame_overlay
    from napari_deformdiff.core.inspect.vector_style import vector_strides
    from napari_deformdiff.core.phantom import cardiac_phantom
    from napari_deformdiff.core.phantom.dataset import case_volumes

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    canvas = viewer.window._qt_viewer.canvas._scene_canvas.native
    rows = []

    def pump(ms=50):
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            app.processEvents()

    case = cardiac_phantom(0, frames=FRAMES)
    image, labels = case_volumes(case, "bench")
    data, kwargs, kind = volume_to_layer_data(image)
    attach_field(kwargs["metadata"], case.fields)
    source = viewer.add_layer(Layer.create(data, kwargs, kind))
    viewer.add_layer(Layer.create(*volume_to_layer_data(labels, opacity=0.4)))
    viewer.dims.set_current_step(1, 16)
    pump(300)

    def step_times():
        times = []
        for t in list(range(FRAMES)) * 2:
            t0 = time.perf_counter()
            viewer.dims.set_current_step(0, t)
            app.processEvents()
            canvas.repaint()  # synchronous paint: the user sees the new frame now
            times.append(time.perf_counter() - t0)
        return times[2:]  # first changes warm caches

    base = step_times()
    _, widget = viewer.window.add_plugin_dock_widget("napari-deformdiff", "Inspect deformation")
    widget.source.value = source
    widget.magnitude_on.value = True
    t0 = time.perf_counter()
    widget.start()
    while widget.worker is not None or widget.overlays.count < FRAMES or not widget.overlays.idle:
        app.processEvents()
    build_all = time.perf_counter() - t0
    pump(300)
    with_overlays = step_times()
    n_vec = len(widget.overlays.vectors_of(0)[0])  # the Vectors layer holds the frame shown
    rows.append(("time-step change + repaint, all overlays (median)", statistics.median(with_overlays),
                 f"{statistics.median(with_overlays) / statistics.median(base):.2f}x image+labels only "
                 f"({statistics.median(base) * 1000:.0f} ms); {n_vec} vectors/frame, strides "
                 f"{vector_strides(case.images.shape[1:])}"))
    rows.append(("time-step change + repaint, all overlays (max)", max(with_overlays),
                 f"image+labels only max {max(base) * 1000:.0f} ms"))
    rows.append((f"build overlays of {FRAMES} frames in the worker", build_all, ""))

    spacing = case.spacing
    one = [0.0] * 5
    for i in range(5):
        t0 = time.perf_counter()
        frame_overlay(case.fields[5 + i], spacing)
        one[i] = time.perf_counter() - t0
    rows.append(("overlays of one frame (vectors, grid, det, folding, |u|)", statistics.median(one), ""))
    u = torch.from_numpy(case.fields[7:8])
    jac = []
    for _ in range(7):
        t0 = time.perf_counter()
        spatial.jacobian_determinant(u)
        jac.append(time.perf_counter() - t0)
    f = case.fields[7].astype(np.float64)
    t0 = time.perf_counter()
    for _ in range(3):
        np.gradient(f, axis=(1, 2, 3))
    np_grad = (time.perf_counter() - t0) / 3
    rows.append(("Jacobian determinant of one frame", statistics.median(jac),
                 f"numpy.gradient alone (no determinant): {np_grad * 1000:.0f} ms"))

    cpu_in_gap = []  # GUI-thread CPU ms of each gap of the last gaps_while

    def gaps_while(run_seconds=None, until=None, ready=None):
        """Event-loop gaps (ms) seen by a 5 ms QTimer, and the index where `ready()` first held."""
        timer, clock, gaps = QTimer(), QElapsedTimer(), []
        last, last_cpu, ready_at = [0], [time.thread_time()], [None]
        cpu_in_gap.clear()
        clock.start()

        def tick():
            now, cpu = clock.elapsed(), time.thread_time()
            gaps.append(now - last[0])
            cpu_in_gap.append((cpu - last_cpu[0]) * 1000)
            last[0], last_cpu[0] = now, cpu
            if ready_at[0] is None and ready is not None and ready():
                ready_at[0] = len(gaps)

        timer.timeout.connect(tick)
        timer.start(5)
        start = time.perf_counter()
        while True:
            app.processEvents()
            time.sleep(0.001)
            if run_seconds is not None and time.perf_counter() - start > run_seconds:
                break
            if until is not None and until():
                break
        timer.stop()
        del cpu_in_gap[0]
        return gaps[1:], ready_at[0]

    idle, _ = gaps_while(run_seconds=3.0)
    widget.overlays.remove()
    _, phantom = viewer.window.add_plugin_dock_widget("napari-deformdiff", "Phantom generator")
    phantom.frames.value = FRAMES

    removal = []  # (ms in viewer.layers.clear(), ms of the next event-loop turn: the one full collection)

    def stream_gaps(present: int):
        """Event-loop gaps while the phantom streams FRAMES frames and the overlays follow, with
        `present` - 7 other 4D layers in the viewer (the stream makes 7: image, labels, 5 overlays),
        and in the 3 s after; the threads that computed during the run, with their niceness."""
        t0 = time.perf_counter()
        viewer.layers.clear()
        t1 = time.perf_counter()
        app.processEvents()  # the next turn: the one full collection after removals
        removal.append(((t1 - t0) * 1000, (time.perf_counter() - t1) * 1000))
        for k in range(present - 7):
            viewer.add_layer(Layer.create(*volume_to_layer_data(image if k % 2 == 0 else labels,
                                                                 name=f"other {k}")))
        pump(300)
        started = []

        def follow(event):
            from napari_deformdiff.core.events import Frame

            if isinstance(event, Frame) and not started:
                widget.source.reset_choices()
                widget.source.value = phantom.sequence.image_layer
                started.append(widget.start())

        def all_layers_exist():
            return (phantom.sequence is not None and phantom.sequence.labels_layer is not None and started
                    and widget.overlays is not None and len(widget.overlays.layers) == 5)

        ticks = cpu_ticks_by_thread()
        t_click = time.perf_counter()
        worker = phantom.start()  # the Generate click: the time slider is made here, before the run
        clicks.append((time.perf_counter() - t_click) * 1000)
        worker.yielded.connect(follow)
        t0 = time.perf_counter()
        gaps, ready_at = gaps_while(
            until=lambda: phantom.worker is None and widget.worker is None and widget.overlays is not None
            and widget.overlays.count == FRAMES and widget.overlays.idle,
            ready=all_layers_exist)
        assert len(viewer.layers) == present, len(viewer.layers)
        busy = [(name, nice) for tid, (t, nice, name) in cpu_ticks_by_thread().items()
                if tid != os.getpid() and t - ticks.get(tid, (0,))[0] >= 20]  # >= 0.2 s of CPU
        threads.append(busy)
        cpu = list(cpu_in_gap)
        after, _ = gaps_while(run_seconds=3.0)  # the full garbage collections a run defers (gc.freeze)
        after_cpu = list(cpu_in_gap)
        steady = (gaps[ready_at:], cpu[ready_at:]) if ready_at is not None else ([], [])
        paints = []
        for _ in range(10):  # napari alone: one synchronous repaint with every layer of the run present
            t1 = time.perf_counter()
            canvas.repaint()
            paints.append((time.perf_counter() - t1) * 1000)
            pump(30)
        repaint.append(paints)
        widget.overlays.remove()
        return (gaps, cpu), steady, (after, after_cpu), time.perf_counter() - t0

    def cpu_note(gaps, cpu):
        worst = int(np.argmax(gaps))
        return (f"p99 {np.percentile(gaps, 99):.0f} ms; GUI-thread CPU in that gap {cpu[worst]:.0f} ms, "
                f"most in any gap {max(cpu):.0f} ms, gaps with over 100 ms of it: {sum(c > 100 for c in cpu)}")

    threads = []
    clicks = []  # ms of phantom.start(): the click's own turn
    repaint = []  # ms of synchronous canvas repaints after each run, all its layers present
    load = [os.getloadavg()[0]]
    for present in (7, 20):
        (gaps, cpu), (steady, steady_cpu), (after, after_cpu), streamed = stream_gaps(present)
        load.append(os.getloadavg()[0])
        rows.append((f"longest event-loop gap during a run, {present} layers, including layer creation",
                     max(gaps) / 1000, f"{cpu_note(gaps, cpu)}; {FRAMES} frames generated + inspected in "
                     f"{streamed:.1f} s"))
        if steady:
            rows.append((f"longest event-loop gap during a run, {present} layers, once all layers exist",
                         max(steady) / 1000, cpu_note(steady, steady_cpu)))
        rows.append((f"the Generate click itself (phantom.start()), {present} layers", clicks[-1] / 1000,
                     "before the run: checks, the worker started, the time slider made if the viewer lacks it"))
        rows.append((f"one canvas repaint, {present} layers, no run (napari + OpenGL alone, median)",
                     statistics.median(repaint[-1]) / 1000, f"max {max(repaint[-1]):.0f} ms: the floor of a gap "
                     "in which a frame is shown"))
        rows.append((f"longest event-loop gap in the 3 s after the run, {present} layers", max(after) / 1000,
                     f"{cpu_note(after, after_cpu)}; the run's own objects collected, older ones stay frozen"))
        busy = threads[-1]
        niced = sorted({name for name, nice in busy if nice >= 10})
        not_niced = sorted({name for name, nice in busy if nice < 10})
        rows.append((f"threads that computed during the run, {present} layers (besides the GUI thread)", float("nan"),
                     f"{sum(n >= 10 for _, n in busy)} at niceness >= 10 ({', '.join(niced)}); "
                     f"{sum(n < 10 for _, n in busy)} not niced ({', '.join(not_niced)})"))
    for present, (cleared, gap) in zip((7, 20), removal, strict=True):
        rows.append((f"removing the layers before the {present}-layer run: viewer.layers.clear()", cleared / 1000,
                     f"then the next event-loop turn {gap:.0f} ms (the one full garbage collection)"))
    rows.append(("event-loop gap with an idle viewer (max)", max(idle) / 1000,
                 f"p99 {np.percentile(idle, 99):.0f} ms; load average (1 min) during the runs: "
                 + " .. ".join(f"{x:.1f}" for x in load) + f" on {os.cpu_count()} CPUs"))

    print_table(f"napari-deformdiff inspect benchmark — {platform.machine()}, {os.cpu_count()} CPUs, "
                f"torch {torch.__version__}, napari {napari.__version__}, Qt platform {app.platformName()}", rows)
    viewer.close()


if __name__ == "__main__":
    main()
