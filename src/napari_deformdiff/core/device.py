"""The one place that decides which torch device the models run on.

Order of precedence: an explicit request (CLI --device, widget choice) > the DEFORMDIFF_DEVICE
environment variable > the napari plugin setting (passed in by the GUI) > automatic
(CUDA if available, else Apple MPS, else CPU). "auto" at any level defers to the next one.
"""

from __future__ import annotations

import os

from .errors import InputError

ENV_VAR = "DEFORMDIFF_DEVICE"
CHOICES = ("auto", "cpu", "cuda", "mps")


def choose_device_name(requested: str | None = None, *, setting: str | None = None) -> str:
    """Resolve the device name ("cpu", "cuda", "cuda:1", "mps") without creating it."""
    import torch

    for source, value in (
        ("requested device", requested),
        (f"environment variable {ENV_VAR}", os.environ.get(ENV_VAR)),
        ("napari-deformdiff setting", setting),
    ):
        value = (value or "").strip().lower()
        if value and value != "auto":
            _check_available(value, source, torch)
            return value
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def choose_device(requested: str | None = None, *, setting: str | None = None):
    import torch

    return torch.device(choose_device_name(requested, setting=setting))


def _check_available(name: str, source: str, torch) -> None:
    kind, _, index = name.partition(":")
    if kind not in CHOICES[1:] or (index and not index.isdigit()):
        raise InputError(f"{source}: unknown device '{name}'; use one of {', '.join(CHOICES)} or cuda:N.")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{source} asks for '{name}' but this torch build sees no CUDA GPU; use cpu or auto.")
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"{source} asks for '{name}' but only {torch.cuda.device_count()} GPU(s) exist.")
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"{source} asks for 'mps' but Apple MPS is not available here; use cpu or auto.")
