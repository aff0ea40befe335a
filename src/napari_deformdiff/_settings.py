"""The plugin's napari settings (npe2 `configurations`), read where the GUI needs them."""

from __future__ import annotations

PLUGIN = "napari-deformdiff"


def device_setting() -> str:
    """The Preferences choice Compute > Device ("auto", "cpu", "cuda" or "mps")."""
    from napari.settings import get_plugin_settings

    return get_plugin_settings(PLUGIN).compute.device


def gui_device_name(requested: str | None = None) -> str:
    """The device a widget should run on: its own choice, else env var, else the setting, else auto."""
    from .core.device import choose_device_name

    return choose_device_name(requested, setting=device_setting())
