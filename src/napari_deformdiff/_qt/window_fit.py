"""Fit napari's window with the plugin's docks to the screen: docks tabbed and scrollable, the
window on the available screen area, and most of its width left to the canvas."""

from __future__ import annotations

# Share of the window width for the tabbed plugin docks (right) and napari's layer docks (left).
PLUGIN_DOCK_SHARE = 0.235
LAYER_DOCK_SHARE = 0.14
COMBO_MIN_CHARACTERS = 8  # drop-downs shrink to this many characters, then elide


def make_scrollable(dock) -> None:
    """Put the dock's widget in a scroll area: a dock taller or wider than its space scrolls."""
    from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea

    inner = dock.widget()
    for combo in inner.findChildren(QComboBox):  # long layer names must not widen the dock
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(COMBO_MIN_CHARACTERS)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(inner)
    if hasattr(inner, "_magic_widget"):  # napari's dock.inner_widget() still finds the magicgui widget
        scroll._magic_widget = inner._magic_widget
    dock.setWidget(scroll)


def fit_width(native, *, wrap: bool = True) -> None:
    """Let a widget take the dock's width instead of asking for its own: a long status or quality
    line (word-wrapped) or a plot must not make a narrow dock scroll sideways."""
    from qtpy.QtWidgets import QSizePolicy

    if wrap:
        native.setWordWrap(True)
    policy = native.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    native.setSizePolicy(policy)


def fit_to_screen(docks: list, short_titles: list[str], raised: int = 0, size: tuple[int, int] | None = None) -> None:
    """Tab `docks` together (titles `short_titles`), make them scrollable, size the window to the
    available screen area (or to `size`, width and height) and give the docks their share of its
    width; dock `raised` on top."""
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QGuiApplication
    from qtpy.QtWidgets import QApplication, QDockWidget, QTabWidget

    window = docks[0].window()
    for dock, title in zip(docks, short_titles, strict=True):
        make_scrollable(dock)
        dock.setWindowTitle(title)  # the tab's text
        dock.setMinimumHeight(50)  # napari made the content's height its minimum; the scroll area takes over
    window.setTabPosition(Qt.DockWidgetArea.RightDockWidgetArea, QTabWidget.TabPosition.West)
    for dock in docks[1:]:
        window.tabifyDockWidget(docks[0], dock)
    docks[raised].raise_()

    if size is None:
        screen = window.screen() or QGuiApplication.primaryScreen()
        area = screen.availableGeometry()
        window.setGeometry(area)
        window.showMaximized()  # a window manager then fits the frame and title bar in the screen too
        width = area.width()
    else:
        window.resize(*size)
        width = size[0]
    QApplication.processEvents()  # docks are sized against the new window size
    left = [d for d in window.findChildren(QDockWidget)
            if window.dockWidgetArea(d) == Qt.DockWidgetArea.LeftDockWidgetArea and d.isVisible()]
    for dock in left + docks:  # Qt made their content's width their minimum
        dock.setMinimumWidth(50)
    for dock in left:  # napari's layer controls and list squeeze their rows instead
        dock.widget().setMinimumWidth(50)
    window.resizeDocks(left + [docks[raised]],
                       [int(width * LAYER_DOCK_SHARE)] * len(left) + [int(width * PLUGIN_DOCK_SHARE)],
                       Qt.Orientation.Horizontal)


def layout_report(window, docks=()) -> dict:
    """Window and canvas (central widget) geometry in window pixels; with `docks` (made scrollable),
    the width their scroll areas show and the width each dock's content needs (wider: it scrolls sideways)."""
    from qtpy.QtCore import QPoint

    canvas = window.centralWidget()
    corner = canvas.mapTo(window, QPoint(0, 0))
    report = {"window_width": window.width(), "window_height": window.height(),
              "canvas_x": corner.x(), "canvas_y": corner.y(),
              "canvas_width": canvas.width(), "canvas_height": canvas.height()}
    if docks:
        shown = [d for d in docks if d.isVisible() and not d.visibleRegion().isEmpty()]  # the raised tab
        report["dock_view_width"] = min(d.widget().viewport().width() for d in shown or docks)
        report["dock_content_widths"] = {d.windowTitle(): d.widget().widget().minimumSizeHint().width() for d in docks}
    return report
