"""A small plot of folding % and max |u| against frame index, with the current frame marked.

Lines are created once and only their data change (a fixed layout, no per-update relayout):
the plot redraws on every streamed frame and must stay cheap for the GUI thread.
"""

from __future__ import annotations


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
        self.marker = self.ax.axvline(1, color="0.5", lw=0.8, ls="--")

    def update(self, metrics: list[dict], current: int) -> None:
        rows = [(t + 1, m) for t, m in enumerate(metrics) if m]
        frames = [t for t, _ in rows]
        self.folding_line.set_data(frames, [m["folding_pct"] for _, m in rows])
        self.motion_line.set_data(frames, [m["max_mm"] for _, m in rows])
        for axis in (self.ax, self.ax2):
            axis.relim()
            axis.autoscale_view()
        self.mark(current)

    def mark(self, t: int) -> None:
        self.marker.set_xdata([t + 1, t + 1])
        self.canvas.draw_idle()

    def series(self) -> dict[str, list[float]]:
        """What is plotted (for tests): the y values of both curves."""
        return {"folding_pct": list(self.folding_line.get_ydata()), "max_mm": list(self.motion_line.get_ydata())}
