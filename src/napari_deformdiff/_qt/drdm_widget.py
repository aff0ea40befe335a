"""Dock widget "Augment (DRDM)": preview one DRDM instance deformation, export augmentations or pairs.

Preview streams the recovery of one sample (the export's first: first level, sample 0, same seed)
into a growing 4D image layer (fields kept for Inspect deformation) and adds the warped labels.
Export runs core.drdm.augment.export_drdm in a worker with a napari progress bar; Cancel stops
after the current step and keeps the complete samples (the manifest lists exactly those).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, SpinBox

from .layer_inputs import chosen_file, follow_layer_list, frame_volume, pick
from ..core.events import Frame, Progress
from .streaming import FrameBuffers, GrowingSequence, StreamingWidget, start_stream

if TYPE_CHECKING:
    import napari

NO_LABELS = "(none)"
DEVICES = ["auto", "cpu", "cuda", "mps"]
DEFAULT_WEIGHTS = "bundled default"
WEIGHTS_FILE = "file..."
REGISTRY_WEIGHTS = ["drdm-cmr-2d"]
MODES = {"augment": "augment", "registration pairs": "pairs"}
IF_FILES = ["stop", "resume", "overwrite"]


class DRDMWidget(StreamingWidget, Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = viewer
        self.image = ComboBox(label="Image", choices=lambda _w: pick(viewer.layers, Image))
        self.labels = ComboBox(label="Labels", choices=lambda _w: [(NO_LABELS, None), *pick(viewer.layers, Labels)])
        self.level_from = SpinBox(label="Levels from", value=40, min=1, max=80)
        self.level_to = SpinBox(label="Levels to", value=64, min=1, max=80)
        self.level_step = SpinBox(label="Levels step", value=8, min=1, max=80)
        self.samples = SpinBox(label="Samples per level", value=4, min=1, max=10_000)
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.loop = ComboBox(label="Recovery loop", choices=["paper", "authors"], value="paper")
        self.weights = ComboBox(label="Weights", choices=[DEFAULT_WEIGHTS, *REGISTRY_WEIGHTS, WEIGHTS_FILE],
                                value=DEFAULT_WEIGHTS)
        self.weights_file = FileEdit(label="Weights file", mode="r", filter="*.safetensors *.pth *.pt")
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.precision = ComboBox(label="Precision", choices=["float32", "bfloat16"], value="float32",
                                  tooltip="bfloat16: about 1.7x faster on CPUs with AMX after a one-time "
                                          "compilation (10-40 s); the fields differ, their statistics match")
        self.mode = ComboBox(label="Mode", choices=list(MODES), value="augment")
        self.syn_level = SpinBox(label="Pair motion level (0: same)", value=0, min=0, max=80)
        self.out_dir = FileEdit(label="Output folder", mode="d")
        self.format = ComboBox(label="Format", choices=["nii.gz", "nrrd", "mha"], value="nii.gz")
        self.if_files = ComboBox(label="If the folder has files", choices=IF_FILES, value="stop")
        controls = self._stream_controls("Preview")
        self.export_button = PushButton(text="Export")
        self.export_button.changed.connect(self.export)
        self.extend([self.image, self.labels, self.level_from, self.level_to, self.level_step, self.samples,
                     self.seed, self.loop, self.weights, self.weights_file, self.device, self.precision, self.mode,
                     self.syn_level, self.out_dir, self.format, self.if_files, controls[0], self.export_button,
                     *controls[1:]])
        self.preview_labels = None
        self.exported = 0
        self._export_total = 0
        follow_layer_list(self, viewer)

    # ------------------------------------------------------------------ inputs

    def _weights(self):
        from ..core.errors import InputError

        choice = self.weights.value
        if choice == DEFAULT_WEIGHTS:
            return None
        if choice != WEIGHTS_FILE:
            return choice
        path = chosen_file(self.weights_file)
        if path is None:
            raise InputError("DRDM: choose a weights file, or the bundled default.")
        if not path.is_file():
            raise InputError(f"DRDM: weights file {path} does not exist.")
        return path

    def _settings(self):
        from ..core.drdm.augment import ExportSettings
        from ..core.errors import InputError

        lo, hi, step = self.level_from.value, self.level_to.value, self.level_step.value
        if hi < lo:
            raise InputError(f"DRDM: levels from {lo} to {hi}: 'to' must not be below 'from'.")
        mode = MODES[self.mode.value]
        syn = self.syn_level.value if mode == "pairs" and self.syn_level.value > 0 else None
        return ExportSettings(levels=f"{lo}:{hi}:{step}", samples=self.samples.value, seed=self.seed.value,
                              mode=mode, syn_level=syn, loop=self.loop.value, fmt=self.format.value,
                              precision=self.precision.value)

    def _case(self):
        from ..core.drdm.augment import Case, check_case, safe_name
        from ..core.errors import InputError

        if self.image.value is None:
            raise InputError("DRDM: choose an image layer.")
        image = frame_volume(self.viewer, self.image.value, is_labels=False)
        labels = None
        if self.labels.value is not None:
            labels = frame_volume(self.viewer, self.labels.value, is_labels=True)
        case = Case(safe_name(self.image.value.name), image, labels, self.image.value.name)
        check_case(case)
        return case

    def _device(self):
        from .._settings import gui_device_name

        return gui_device_name(None if self.device.value == "auto" else self.device.value)

    # ------------------------------------------------------------------ preview

    def start(self):
        """Preview: stream the recovery of the export's first sample into a 4D layer."""
        from napari.utils.notifications import show_error

        from ..core.drdm.augment import plan_export
        from ..core.errors import InputError

        try:
            case = self._case()
            settings = self._settings()
            weights = self._weights()
            device = self._device()
        except (InputError, ValueError) as exc:
            show_error(str(exc))
            return None
        unit = plan_export([case], settings)[0]
        name = f"DRDM {case.name} level {unit.level} seed {unit.seed}"
        self.sequence = None
        self.preview_labels = None
        self._last_frame = None
        buffers = FrameBuffers()

        def events():
            from ..core.drdm.generate import deform_instance
            from ..core.drdm.weights import load_drdm

            model, meta = load_drdm(weights, ndims=case.image.geometry.ndim, device=device)
            yield from deform_instance(case.image, unit.level, model=model, meta=meta, labels=case.labels,
                                       seed=unit.seed, loop=settings.loop, device=device,
                                       precision=settings.precision)

        def on_event(event):
            if isinstance(event, Progress):
                self.status.value = event.message
            if not isinstance(event, Frame):
                return
            if self.sequence is None:
                self.sequence = GrowingSequence(self.viewer, name=name, geometry=case.image.geometry,
                                                total=event.total, buffers=buffers)
            self.sequence.add(event)
            self._last_frame = event
            self.status.value = f"step {event.index + 1}/{event.total} (t = {event.info.get('t', '-')})"

        def on_done():
            self._add_preview_labels(case, name)
            self.run_button.enabled, self.cancel_button.enabled = True, False
            self.export_button.enabled = True
            made = self.sequence.count if self.sequence else 0
            total = self.sequence.total if self.sequence else 0
            self.status.value = f"preview: {made}/{total} steps"
            self.worker = None

        self._running()
        self.export_button.enabled = False
        self.worker = start_stream(events, description=name, on_event=on_event,
                                   on_done=on_done, prepare=buffers.stage)
        return self.worker

    def _add_preview_labels(self, case, name: str) -> None:
        frame = self._last_frame
        if case.labels is None or frame is None or frame.field is None:
            return
        from napari.layers import Layer

        from .._layers import volume_to_layer_data
        from ..core.drdm.augment import warp_array
        from ..core.io import Volume

        warped = frame.labels if frame.labels is not None else warp_array(case.labels.data, frame.field,
                                                                              labels=True)
        volume = Volume(warped, case.image.geometry, True, f"{name} labels", None, "generated")
        self.preview_labels = self.viewer.add_layer(Layer.create(*volume_to_layer_data(volume, opacity=0.4)))

    # ------------------------------------------------------------------ export

    def export(self):
        """Export: the whole batch into the output folder, in a worker; Cancel keeps complete samples."""
        from napari.utils.notifications import show_error

        from ..core.drdm.augment import check_cases, export_drdm, plan_export, prepare_output
        from ..core.errors import InputError

        try:
            case = self._case()
            settings = self._settings()
            weights = self._weights()
            device = self._device()
            value = self.out_dir.value
            if value is None or str(value) in ("", "."):
                raise InputError("DRDM: choose an output folder.")
            out = Path(value)
            check_cases([case])
            units = plan_export([case], settings)
            overwrite, resume = self.if_files.value == "overwrite", self.if_files.value == "resume"
            done = prepare_output(out, units, settings, overwrite=overwrite, resume=resume)
        except (InputError, ValueError) as exc:
            show_error(str(exc))
            return None

        total = len(units)
        self.exported = len(done)
        self._export_total = total

        def events():
            yield from export_drdm([case], out, settings, weights=weights, device=device, overwrite=overwrite,
                                   resume=resume)

        def on_event(event):
            if isinstance(event, Frame):
                self.exported += 1
                self.status.value = f"exported {self.exported}/{total}: {event.info['id']}"
            elif isinstance(event, Progress):
                self.status.value = event.message

        def on_done():
            self.run_button.enabled, self.export_button.enabled, self.cancel_button.enabled = True, True, False
            self.status.value = f"exported {self.exported}/{total} samples to {out}"
            self.worker = None

        self.run_button.enabled, self.export_button.enabled, self.cancel_button.enabled = False, False, True
        self.status.value = "starting export..."
        self.worker = start_stream(events, description=f"DRDM export to {out.name}", on_event=on_event,
                                   on_done=on_done)
        return self.worker
