"""A small plot of folding % and max |u| against frame index, with the current frame marked."""

from __future__ import annotations


class ReadoutPlot:
    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(150)
        self.ax = self.figure.add_subplot()
        self.ax2 = self.ax.twinx()
        self.marker = None
        self._style()

    def _style(self):
        self.ax.set_xlabel("frame", fontsize=8)
        self.ax.set_ylabel("folding %", fontsize=8, color="#c03070")
        self.ax2.set_ylabel("max |u| mm", fontsize=8, color="#2070c0")
        for axis in (self.ax, self.ax2):
            axis.tick_params(labelsize=7)

    def update(self, metrics: list[dict], current: int) -> None:
        frames = [t + 1 for t, m in enumerate(metrics) if m]
        rows = [m for m in metrics if m]
        self.ax.clear()
        self.ax2.clear()
        self._style()
        self.ax.plot(frames, [m["folding_pct"] for m in rows], color="#c03070", marker=".", lw=1)
        self.ax2.plot(frames, [m["max_mm"] for m in rows], color="#2070c0", marker=".", lw=1)
        self.marker = None
        self.mark(current)

    def mark(self, t: int) -> None:
        if self.marker is not None:
            self.marker.remove()
        self.marker = self.ax.axvline(t + 1, color="0.5", lw=0.8, ls="--")
        self.canvas.draw_idle()

    def series(self) -> dict[str, list[float]]:
        """What is plotted (for tests): the y values of both curves."""
        return {
            "folding_pct": list(self.ax.lines[0].get_ydata()) if self.ax.lines else [],
            "max_mm": list(self.ax2.lines[0].get_ydata()) if self.ax2.lines else [],
        }
