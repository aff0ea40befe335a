"""Checks on what a real viewer shows, shared by the GUI tests."""

from __future__ import annotations

import numpy as np


def canvas_at_steps(viewer, qtbot, steps, wait_ms: int = 300) -> list[np.ndarray]:
    """Canvas screenshots (RGB, float) with the time slider at each of `steps`, cropped to their
    common size about the centre (a dock whose text changes can resize the canvas by a few pixels
    in between; the view stays centred)."""
    shots = []
    for t in steps:
        viewer.dims.set_current_step(0, t)
        qtbot.wait(wait_ms)
        shots.append(viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float))
    return common_centre(*shots)


def common_centre(*shots: np.ndarray) -> list[np.ndarray]:
    """Screenshots cropped to their common size about their centres."""
    h, w = min(s.shape[0] for s in shots), min(s.shape[1] for s in shots)
    return [s[(s.shape[0] - h) // 2:][:h, (s.shape[1] - w) // 2:][:, :w] for s in shots]


def assert_change_near_the_centre(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The pixels that changed: a small share of the canvas (the heart moves, the torso does
    not), centred in the view. Returns the mask."""
    changed = np.abs(after - before).sum(-1) > 40
    assert 0.002 < changed.mean() < 0.2, changed.mean()
    rows, cols = np.nonzero(changed)
    h, w = changed.shape
    assert abs(rows.mean() - h / 2) < h / 4 and abs(cols.mean() - w / 2) < w / 4
    return changed


def stream_phantom_with_overlays(viewer, qtbot, frames: int, *, magnitude: bool = False, timeout: int = 60_000):
    """The 2D phantom generator streams `frames` frames while Inspect deformation follows it from the
    first frame; returns (phantom widget, inspect widget) once every frame's overlays are drawn."""
    from napari_deformdiff.core.events import Frame

    _, phantom = viewer.window.add_plugin_dock_widget("napari-deformdiff", "Phantom generator")
    phantom.two_d.value = True
    phantom.frames.value = frames
    _, inspect = viewer.window.add_plugin_dock_widget("napari-deformdiff", "Inspect deformation")
    inspect.magnitude_on.value = magnitude
    started = []

    def first_frame(event):
        if isinstance(event, Frame) and not started:
            inspect.source.reset_choices()
            inspect.source.value = phantom.sequence.image_layer
            started.append(inspect.start())

    worker = phantom.start()
    worker.yielded.connect(first_frame)
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass
    qtbot.waitUntil(lambda: inspect.overlays is not None and inspect.overlays.count == frames
                    and inspect.worker is None and inspect.overlays.idle, timeout=timeout)
    return phantom, inspect
