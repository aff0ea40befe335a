"""Dock widget "Augment (DRDM)": preview one DRDM instance deformation, export augmentations or pairs.

The input is an image layer (and its labels) or a folder / ACDC dataset, read as `deformdiff
generate drdm --image DIR` reads it (core.drdm.augment.find_cases).
Preview streams the recovery of one sample (the export's first: first level, sample 0, same seed)
into a growing 4D image layer (fields kept for Inspect deformation) and adds the warped labels.
Export runs core.drdm.augment.export_drdm in a worker with a napari progress bar over the whole
batch; Cancel stops within the current sample and keeps the complete ones (the manifest lists
exactly those), and Resume continues such a folder.
Image and labels default to the newest ACDC ED and its labels; a time series needs the explicit
frame choice. After a preview the status line warns about folding and about the bundled
(phantom) weights on an image that is not a phantom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, FileEdit, PushButton, SpinBox

from ..core.events import Frame
from .generator_widget import GeneratorWidget
from .layer_inputs import RoleDefaults, compact, follow_layer_list, pick
from .stream_layers import FrameBuffers, GrowingSequence

if TYPE_CHECKING:
    import napari

NO_LABELS = "(none)"
MODES = {"augment": "augment", "registration pairs": "pairs"}
IF_FILES = ["stop", "resume", "overwrite"]
LAYER, FOLDER = "layer", "folder / ACDC dataset"


class DRDMWidget(GeneratorWidget):
    method = "DRDM"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = viewer
        self.source = ComboBox(label="Input", choices=[LAYER, FOLDER], value=LAYER)
        self.in_folder = FileEdit(label="Input folder", mode="d", visible=False,
                                  tooltip="images (labels <name>_gt, _seg, ... beside them or in labels/), "
                                          "an ACDC patient folder, or a folder of them")
        self.image = ComboBox(label="Image", choices=lambda _w: pick(viewer.layers, Image))
        self.labels = ComboBox(label="Labels", choices=lambda _w: [(NO_LABELS, None), *pick(viewer.layers, Labels)])
        compact(self.image, self.labels)
        self.level_from = SpinBox(label="Levels from", value=40, min=1, max=80)
        self.level_to = SpinBox(label="Levels to", value=64, min=1, max=80)
        self.level_step = SpinBox(label="Levels step", value=8, min=1, max=80)
        self.samples = SpinBox(label="Samples", tooltip="Samples per level.", value=4, min=1, max=10_000)
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.loop = ComboBox(label="Recovery loop", choices=["paper", "authors"], value="paper")
        compute = self._compute_controls(registry="drdm", precision=True)
        self.mode = ComboBox(label="Mode", choices=list(MODES), value="augment")
        self.syn_level = SpinBox(label="Pair level", tooltip="Level of the pair's second motion; 0: the same level.", value=0, min=0, max=80)
        self.out_dir = FileEdit(label="Output folder", mode="d")
        self.format = ComboBox(label="Format", choices=["nii.gz", "nrrd", "mha"], value="nii.gz")
        self.if_files = ComboBox(label="Existing files", tooltip="What to do if the output folder already has files.", choices=IF_FILES, value="stop")
        controls = self._stream_controls("Preview")
        self.export_button = PushButton(text="Export")
        self.export_button.changed.connect(self.export)
        self.resume_button = PushButton(text="Resume", tooltip="continue an interrupted export in the output folder")
        self.resume_button.changed.connect(self.resume)
        self.source.changed.connect(self._show_source)
        self.extend([self.source, self.in_folder, self.image, self.labels, self._slider_control(), self.level_from, self.level_to, self.level_step, self.samples,
                     self.seed, self.loop, *compute, self.mode, self.syn_level, self.out_dir, self.format,
                     self.if_files, controls[0], self.export_button, self.resume_button, *controls[1:]])
        self.preview_labels = None
        self.exported = 0
        self._export_total = 0
        self.defaults = RoleDefaults(viewer, [(self.image, "ED", None), (self.labels, "ED labels", self.image)])
        self.defaults.apply()
        follow_layer_list(self, viewer, self.defaults)

    def _show_source(self, *_args) -> None:
        folder = self.source.value == FOLDER
        self.in_folder.visible = folder
        for widget in (self.image, self.labels, self.use_slider):
            widget.visible = not folder

    # ------------------------------------------------------------------ inputs

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
        image = self._frame(self.image.value, is_labels=False)
        labels = None
        if self.labels.value is not None:
            labels = self._frame(self.labels.value, is_labels=True)
        case = Case(safe_name(self.image.value.name), image, labels, self.image.value.name)
        check_case(case)
        return case

    def _cases(self) -> list:
        """The chosen layer's case, or every case of the input folder (as `--image DIR` finds them)."""
        from ..core.drdm.augment import find_cases
        from ..core.errors import InputError
        from .layer_inputs import chosen_file

        if self.source.value == LAYER:
            return [self._case()]
        folder = chosen_file(self.in_folder)
        if folder is None:
            raise InputError("DRDM: choose an input folder (images, an ACDC patient folder or a folder of them).")
        if not folder.is_dir():
            raise InputError(f"DRDM: {folder} is not a folder.")
        return find_cases(folder)[0]

    def _inputs(self):
        """(cases, settings, device name, weights) as chosen."""
        cases = self._cases()
        settings = self._settings()
        return cases, settings, *self._compute()

    def _export_inputs(self, resume: bool = False):
        """What _inputs gives, and the output folder, the units to make and those already there."""
        from ..core.drdm.augment import check_cases, plan_export, prepare_output
        from ..core.errors import InputError
        from .layer_inputs import chosen_file

        cases, settings, device, weights = self._inputs()
        out = chosen_file(self.out_dir)
        if out is None:
            raise InputError("DRDM: choose an output folder.")
        if resume and not out.is_dir():
            raise InputError(f"DRDM: {out} does not exist; there is no export to resume.")
        check_cases(cases)
        units = plan_export(cases, settings)
        overwrite = self.if_files.value == "overwrite" and not resume
        resume = resume or self.if_files.value == "resume"
        # the files are verified by the export itself, in the worker
        done = prepare_output(out, units, settings, overwrite=overwrite, resume=resume, verify=False)
        return cases, settings, device, weights, out, units, done, overwrite, resume

    # ------------------------------------------------------------------ preview

    def start(self):
        """Preview: stream the recovery of the export's first sample into a 4D layer."""
        from ..core.drdm.augment import plan_export

        inputs = self._read(self._inputs)
        if inputs is None:
            return None
        from .._layers import short_label

        cases, settings, device, weights = inputs
        case = cases[0]
        unit = plan_export([case], settings)[0]
        from_layers = self.source.value == LAYER
        inputs_shown = (self.image.value, self.labels.value) if from_layers else (None, None)
        name = f"DRDM {short_label(inputs_shown[0]) if from_layers else case.name} level {unit.level}"
        provenance = {"method": "DRDM", "image": inputs_shown[0].name if from_layers else case.source,
                      "labels": inputs_shown[1].name if inputs_shown[1] is not None else None,
                      "weights": self._weights_text(weights), "seed": settings.seed, "sample_seed": unit.seed,
                      "level": unit.level,
                      "loop": settings.loop, "precision": settings.precision, "device": device,
                      "time_series_frame": self.use_slider.value}
        self._provenance = provenance
        note = self._phantom_note(weights, inputs_shown[0])
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
            if not isinstance(event, Frame):
                return
            if self.sequence is None:
                self.sequence = GrowingSequence(self.viewer, name=name, geometry=case.image.geometry,
                                                total=event.total, buffers=buffers, provenance=provenance,
                                                on_first=lambda _l: self._hide(*inputs_shown))
            self.sequence.add(event)
            self._last_frame = event
            self.status.value = f"step {event.index + 1}/{event.total} (t = {event.info.get('t', '-')})"

        def on_done():
            self._add_preview_labels(case, name)
            self._idle()
            self.export_button.enabled = self.resume_button.enabled = True
            made = self.sequence.count if self.sequence else 0
            total = self.sequence.total if self.sequence else 0
            self.status.value = self._line(f"preview: {made}/{total} steps", self._folding(), note, self._failure)

        self.export_button.enabled = self.resume_button.enabled = False
        return self._stream(events, description=name, on_event=on_event, on_done=on_done, prepare=buffers.stage)

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
        from .._layers import set_provenance

        volume = Volume(warped, case.image.geometry, True, f"{name} labels", None, "generated")
        data, kwargs, kind = volume_to_layer_data(volume, opacity=0.4, blending="translucent")
        set_provenance(kwargs["metadata"], self._provenance)
        self.preview_labels = self.viewer.add_layer(Layer.create(data, kwargs, kind))

    def _folding(self) -> str:
        from ..core.quality import folding_note

        buffers = self.sequence.buffers if self.sequence is not None else None
        if buffers is None or buffers.fields is None:
            return ""
        return folding_note(buffers.fields[: self.sequence.count])

    # ------------------------------------------------------------------ export

    def export(self):
        """Export: the whole batch into the output folder, in a worker; Cancel keeps complete samples."""
        return self._export(resume=False)

    def resume(self):
        """Continue the export in the output folder (same settings): only the missing samples are made."""
        return self._export(resume=True)

    def _export(self, *, resume: bool):
        from napari.utils.notifications import show_warning

        from ..core.drdm.augment import export_drdm
        from ..core.events import Progress

        inputs = self._read(lambda: self._export_inputs(resume))
        if inputs is None:
            return None
        cases, settings, device, weights, out, units, done, overwrite, resume = inputs
        total = len(units)
        self.exported = len(done)
        self._export_total = total
        redone: list[str] = []  # listed samples with damaged files, made again (filled in the worker)

        def events():
            made = len(done)
            for event in export_drdm(cases, out, settings, weights=weights, device=device, overwrite=overwrite,
                                     resume=resume, on_redo=redone.append):
                if isinstance(event, Frame):
                    made = event.info["done"]
                elif isinstance(event, Progress) and event.stage == "samples":  # the whole batch's count
                    event = Progress(event.index, event.total, f"{made}/{total} samples: {event.message}",
                                     event.stage)
                yield event

        def on_event(event):
            if isinstance(event, Frame):
                self.exported = event.info["done"]
                self.status.value = f"exported {self.exported}/{total}: {event.info['id']}"

        def on_done():
            self._idle()
            self.export_button.enabled = self.resume_button.enabled = True
            for message in redone:
                show_warning(message)
            rest = "" if self.exported == total else "; Resume continues"
            again = f"; {len(redone)} damaged sample(s) made again" if redone else ""
            self.status.value = self._line(f"exported {self.exported}/{total} samples to {out}{again}{rest}",
                                           self._failure)

        self.export_button.enabled = self.resume_button.enabled = False
        return self._stream(events, description=f"DRDM export to {out.name}", on_event=on_event,
                            on_done=on_done, status="starting export...")
