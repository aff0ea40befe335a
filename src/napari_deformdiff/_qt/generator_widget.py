"""The base of the generator dock widgets (DDM, DRDM, Mo-Diff, phantom).

What each of them has: the compute block (weights, device, precision) read into (device name,
weights) with one set of error messages, and Run / Cancel / a status line around one streamed
generator (start_stream), whose Progress messages go to the status line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton

from ..core.errors import InputError
from ..core.events import Progress
from .layer_inputs import SLIDER_TEXT, SLIDER_TIP, chosen_file, frame_volume
from .stream_layers import GrowingSequence
from .stream_worker import FROZEN_HEAP, StreamHandle, start_stream
from .window_fit import fit_width

DEVICES = ["auto", "cpu", "cuda", "mps"]
WEIGHTS_FILTER = "*.safetensors *.pth *.pt"
DEFAULT_WEIGHTS = "bundled default"
WEIGHTS_FILE = "file..."
PRECISIONS = ["float32", "bfloat16"]
BFLOAT16_TIP = ("bfloat16: about 1.7x faster on CPUs with AMX after a one-time compilation (10-40 s); "
                "the fields differ, their statistics match")


def registry_weights(method: str) -> list[str]:
    """The names of the core registry's weights for `method` (each entry records its method)."""
    from ..core.weights.registry import REGISTRY

    return sorted(name for name, entry in REGISTRY.items() if entry.method == method)


class GeneratorWidget(Container):
    """A magicgui Container that runs one core generator at a time.

    Subclasses put `_compute_controls()` (where they have weights) and `_stream_controls()` into
    their layout and implement `start()`; `_stream()` runs the generator. `method` starts the
    error messages ("DDM: ..."). The default `_done` reports the frames of `self.sequence` out of
    the `frames` spin box.
    """

    method = ""
    worker: StreamHandle | None = None
    sequence: GrowingSequence | None = None

    # ------------------------------------------------------------------ compute settings

    def _compute_controls(self, *, weights_filter: str = WEIGHTS_FILTER, registry: str | None = None,
                          precision: bool = False) -> list:
        """Weights (a file, or with `registry` a choice of the bundled default, the registry's weights
        of that method and a file), device and, with `precision`, precision."""
        if registry is None:
            self.weights = FileEdit(label="Weights file", tooltip="Empty: the bundled weights.", mode="r", filter=weights_filter)
            widgets = [self.weights]
        else:
            self.weights = ComboBox(label="Weights", value=DEFAULT_WEIGHTS,
                                    choices=[DEFAULT_WEIGHTS, *registry_weights(registry), WEIGHTS_FILE])
            self.weights_file = FileEdit(label="Weights file", mode="r", filter=weights_filter)
            widgets = [self.weights, self.weights_file]
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        widgets.append(self.device)
        if precision:
            self.precision = ComboBox(label="Precision", choices=PRECISIONS, value="float32", tooltip=BFLOAT16_TIP)
            widgets.append(self.precision)
        return widgets

    def _weights(self, *, must_exist: bool = True) -> Path | str | None:
        """None for the bundled weights, a registry name, or the chosen file (InputError if it is
        missing and `must_exist`)."""
        if isinstance(self.weights, FileEdit):
            path = chosen_file(self.weights)
            if path is None:
                return None
        else:
            choice = self.weights.value
            if choice == DEFAULT_WEIGHTS:
                return None
            if choice != WEIGHTS_FILE:
                return choice
            path = chosen_file(self.weights_file)
            if path is None:
                raise InputError(f"{self.method}: choose a weights file, or the bundled default.")
        if must_exist and not path.is_file():
            raise InputError(f"{self.method}: weights file {path} does not exist.")
        return path

    def _device_name(self) -> str:
        from .._settings import gui_device_name

        return gui_device_name(None if self.device.value == "auto" else self.device.value)

    def _compute(self, *, must_exist: bool = True) -> tuple[str, Path | str | None]:
        """(device name, weights) as chosen; InputError on a weights choice that cannot work."""
        weights = self._weights(must_exist=must_exist)
        return self._device_name(), weights

    def _read(self, read: Callable):
        """read()'s result, or None after an InputError or ValueError, shown as a notification and,
        whole (napari's pop-up shows its first ~40 characters), on the status line."""
        from napari.utils.notifications import show_error

        try:
            return read()
        except (InputError, ValueError) as exc:
            show_error(str(exc))
            self.status.value = f"Not started: {exc}"
            return None

    # ------------------------------------------------------------------ run / cancel / status

    def _stream_controls(self, run_text: str) -> list:
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        fit_width(self.status.native)  # long quality lines wrap instead of widening the dock
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        FROZEN_HEAP.watch(self.viewer)
        return [self.run_button, self.cancel_button, self.status]

    def start(self):
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs and results

    def _slider_control(self) -> CheckBox:
        """The explicit frame choice for time-series layers (off: they are refused)."""
        self.use_slider = CheckBox(text=SLIDER_TEXT, value=False, tooltip=SLIDER_TIP)
        return self.use_slider

    def _frame(self, layer, *, is_labels: bool):
        return frame_volume(self.viewer, layer, is_labels=is_labels, use_slider=self.use_slider.value,
                            who=self.method)

    @staticmethod
    def _hide(*layers) -> None:
        """Hide the inputs under a new result (it covers them; labels would show twice)."""
        for layer in layers:
            if layer is not None:
                layer.visible = False

    @staticmethod
    def _weights_text(weights) -> str:
        return DEFAULT_WEIGHTS if weights is None else str(weights)

    @staticmethod
    def _phantom_note(weights, layer) -> str:
        """A note when the bundled (phantom-trained) weights meet a layer that is not a phantom."""
        from .._layers import is_phantom
        from ..core.quality import PHANTOM_WEIGHTS_NOTE

        return PHANTOM_WEIGHTS_NOTE if weights is None and layer is not None and not is_phantom(layer) else ""

    @staticmethod
    def _line(*parts: str) -> str:
        return "; ".join(p for p in parts if p)

    _failure = ""  # why the last run stopped early (its error), for the status line

    def _running(self, status: str = "starting...") -> None:
        self._failure = ""
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = status

    def _idle(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.worker = None

    def cancel(self):
        if self.worker is not None:
            self.worker.quit()  # stops at the next event; frames already made stay

    def _done(self):
        if self.sequence is not None:
            self.sequence.flush()
        self._idle()
        made = self.sequence.count if self.sequence else 0
        self.status.value = self._line(f"{made}/{self.frames.value} frames", self._failure)

    def _stream(self, make_events: Callable[[], Iterator], *, description: str, on_event: Callable,
                on_done: Callable[[], None] | None = None, prepare: Callable | None = None,
                status: str = "starting...") -> StreamHandle:
        """Run the generator: Run off, Cancel on; a Progress event's message goes to the status
        line, every other event to `on_event`; `on_done` (default `_done`) when it has stopped."""

        def dispatch(event):
            if isinstance(event, Progress):
                self.status.value = event.message
            else:
                on_event(event)

        def failed(message: str) -> None:
            self._failure = f"stopped: {message}"

        self._running(status)
        self.worker = start_stream(make_events, description=description, on_event=dispatch,
                                   on_done=on_done or self._done, prepare=prepare, on_error=failed)
        return self.worker
