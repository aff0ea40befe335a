"""Qt widgets: they collect parameters, start workers and put results into layers. No compute here."""

from ..core.weights.registry import set_download_progress


def _activity_dock_bar(description: str):
    """A weights download's progress bar in napari's activity dock."""
    from napari.utils import progress

    return progress(desc=description, unit="B", unit_scale=True)


set_download_progress(_activity_dock_bar)
