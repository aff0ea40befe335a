"""A small plot of folding % and max |u| against frame index, with the current frame marked.

Frames are numbered as napari's time slider numbers them (0 .. T - 1); both y axes start at 0.

Lines are created once and only their data change (a fixed layout, no per-update relayout):
the plot redraws on every streamed frame and must stay cheap for the GUI thread.
"""

from __future__ import annotations

import math
import time

from .gui_turns import TURNS

# Smallest top of the y axes: a flat curve at 0 (no folding, no motion) sits on the bottom axis.
MIN_TOP = {"folding": 0.1, "motion": 1.0}


class ReadoutPlot:
    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), dpi=90)
        self.figure.subplots_adjust(left=0.17, right=0.83, bottom=0.24, top=0.95)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(150)
        self.ax = self.figure.add_subplot()
        self.ax2 = self.ax.twinx()
        self.ax.set_xlabel("frame", fontsize=8)
        self.ax.set_ylabel("folding %", fontsize=8, color="#c03070")
        self.ax2.set_ylabel("max |u| mm", fontsize=8, color="#2070c0")
        for axis in (self.ax, self.ax2):
            axis.tick_params(labelsize=7)
        (self.folding_line,) = self.ax.plot([], [], color="#c03070", marker=".", lw=1)
        (self.motion_line,) = self.ax2.plot([], [], color="#2070c0", marker=".", lw=1)
        self.marker = self.ax.axvline(0, color="0.5", lw=0.8, ls="--")
        for axis, key in ((self.ax, "folding"), (self.ax2, "motion")):
            axis.set_ylim(0, MIN_TOP[key])

    def update(self, metrics: list[dict], current: int) -> None:
        rows = [(t, m) for t, m in enumerate(metrics) if m]
        frames = [t for t, _ in rows]
        self.folding_line.set_data(frames, [m["folding_pct"] for _, m in rows])
        self.motion_line.set_data(frames, [m["max_mm"] for _, m in rows])
        for axis, key in ((self.ax, "folding"), (self.ax2, "motion")):
            axis.relim()
            axis.autoscale_view()
            axis.set_ylim(0, max(axis.get_ylim()[1], MIN_TOP[key]))
        self.mark(current)

    def mark(self, t: int) -> None:
        self.marker.set_xdata([t, t])
        self.canvas.draw_idle()

    def series(self) -> dict[str, list[float]]:
        """What is plotted (for tests): the y values of both curves."""
        return {"folding_pct": list(self.folding_line.get_ydata()), "max_mm": list(self.motion_line.get_ydata())}


def _round_up(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is >= x (x itself if <= 0)."""
    if x <= 0:
        return x
    power = 10.0 ** math.floor(math.log10(x))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= x * (1 - 1e-12))


class BlitReadoutPlot(ReadoutPlot):
    """The readout plot, redrawn in full only when its axes change.

    A full redraw of the small figure takes 25-60 ms, three quarters of it tick labels: too
    much for every time step, or every frame that streams in. The curves and the current-frame
    marker are animated artists drawn over a saved background (axes, ticks, labels). The x axis
    spans the frames expected from the start and the y limits grow with headroom and do not
    shrink, so the axes rarely change; when they do, full redraws run in their own event-loop
    turn (gui_turns.TURNS), at most one per FULL_REDRAW_MS.
    """

    FULL_REDRAW_MS = 400

    def __init__(self):
        from qtpy.QtCore import QTimer

        super().__init__()
        for artist in (self.folding_line, self.motion_line, self.marker):
            artist.set_animated(True)
        self._background = None
        self._background_limits = None
        self._in_update = False
        self._kept_ylim: dict = {}
        self._last_full = -1e9
        self._full_timer = QTimer(self.canvas)  # dies with the canvas
        self._full_timer.setSingleShot(True)
        self._full_timer.timeout.connect(lambda: TURNS.submit(self._full_redraw))
        self.canvas.mpl_connect("draw_event", self._on_draw)

    def set_frames(self, total: int) -> None:
        """Fix the x axis to frames 0..total-1 (and let the y axes fit the next curves afresh)."""
        self.ax.set_xlim(-0.5, total - 0.5)
        self._kept_ylim = {}
        self._refresh()

    def _limits(self):
        return (self.ax.get_xlim(), self.ax.get_ylim(), self.ax2.get_ylim(),
                tuple(self.figure.bbox.bounds))

    def _draw_animated(self) -> None:
        self.ax.draw_artist(self.folding_line)
        self.ax2.draw_artist(self.motion_line)
        self.ax.draw_artist(self.marker)

    def _on_draw(self, _event=None) -> None:
        """After every full draw (ours, or Qt's on a resize): save the background, add curves."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._background_limits = self._limits()
        self._draw_animated()

    def _full_due(self) -> bool:
        return self._full_timer.isActive() or TURNS.pending(self._full_redraw)

    def _full_redraw(self) -> None:
        self._last_full = time.monotonic()
        try:
            self.canvas.draw()
        except RuntimeError:  # the canvas was deleted (dock closed) before its turn came
            pass

    def _refresh(self) -> None:
        if self._background is not None and self._limits() == self._background_limits:
            if not self._full_due():
                self.canvas.restore_region(self._background)
                self._draw_animated()
                self.canvas.update()  # not canvas.blit: its synchronous repaint repaints the window
        elif not self._full_due():
            wait = self._last_full + self.FULL_REDRAW_MS / 1000 - time.monotonic()
            self._full_timer.start(max(0, int(wait * 1000)))

    def update(self, metrics: list[dict], current: int) -> None:
        self._in_update = True
        try:
            for axis in (self.ax, self.ax2):
                axis.set_autoscaley_on(True)
            super().update(metrics, current)  # new curves, autoscaled y, self.mark(current)
            for axis in (self.ax, self.ax2):
                self._keep_or_grow_ylim(axis)
        finally:
            self._in_update = False
        self._refresh()

    def _keep_or_grow_ylim(self, axis) -> None:
        """Keep the y limits while the curve fits in them; when it outgrows them, give it half as
        much again, up to a round number: a curve that grows frame by frame (|u| while frames
        stream in) makes a few full redraws, not one per frame."""
        auto = axis.get_ylim()  # the curve with matplotlib's margins
        old = self._kept_ylim.get(axis)
        if old is not None:
            d0, d1 = axis.dataLim.intervaly
            if old[0] <= d0 and d1 <= old[1]:
                axis.set_ylim(old)
            else:
                lo = min(old[0], auto[0])
                axis.set_ylim(lo, _round_up(lo + 1.5 * (auto[1] - lo)))
        self._kept_ylim[axis] = axis.get_ylim()

    def mark(self, t: int) -> None:
        self.marker.set_xdata([t, t])
        if not self._in_update:
            self._refresh()
