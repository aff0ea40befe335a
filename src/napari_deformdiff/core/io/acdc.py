"""ACDC patient folders: patientNNN/Info.cfg, patientNNN_4d.nii.gz, patientNNN_frameXX[_gt].nii.gz.

Info.cfg holds `key: value` lines, among them ED and ES (1-based frame numbers) and NbFrame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .atomic import atomic_output
from .nifti import read_nifti, write_nifti
from .volume import Volume

INFO_FILE = "Info.cfg"


@dataclass
class AcdcPatient:
    """The volumes of one patient folder, named for napari layers."""

    patient: str
    info: dict[str, str]
    ed: Volume
    es: Volume
    ed_labels: Volume | None
    es_labels: Volume | None
    cine: Volume | None

    def volumes(self) -> list[Volume]:
        """Bottom-to-top layer order: cine, ES, ED, then the label maps."""
        ordered = [self.cine, self.es, self.ed, self.es_labels, self.ed_labels]
        return [v for v in ordered if v is not None]


def is_acdc_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (folder / INFO_FILE).is_file()


def read_info(folder: Path) -> dict[str, str]:
    info = {}
    for line in (folder / INFO_FILE).read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def frame_number(info: dict[str, str], key: str, folder: Path) -> int:
    """A 1-based frame number: an integer (12 or 12.0), within 1..NbFrame when NbFrame is given."""
    text = info.get(key)
    try:
        value = float(text)
        number = int(value) if value.is_integer() else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < 1:
        raise InputError(
            f"{folder.name}/{INFO_FILE}: no valid '{key}:' frame number "
            f"(found {text!r}; expected an integer from 1)."
        )
    nb = info.get("NbFrame")
    try:
        nb_value = float(nb) if nb is not None else None
    except ValueError:
        nb_value = None
    if nb_value is not None and nb_value.is_integer() and number > nb_value:
        raise InputError(f"{folder.name}/{INFO_FILE}: {key}: {text} is outside 1..NbFrame ({nb}).")
    return number


def read_acdc_patient(folder: str | Path) -> AcdcPatient:
    folder = Path(folder)
    if not is_acdc_folder(folder):
        raise InputError(f"{folder}: not an ACDC patient folder (no {INFO_FILE}).")
    info = read_info(folder)
    ed, es = frame_number(info, "ED", folder), frame_number(info, "ES", folder)
    patient = _patient_id(folder)

    def find(suffix: str) -> Path | None:
        for ext in (".nii.gz", ".nii"):
            p = folder / f"{patient}_{suffix}{ext}"
            if p.is_file():
                return p
        return None

    def load(suffix: str, name: str, labels: bool, required: bool) -> Volume | None:
        p = find(suffix)
        if p is None:
            if required:
                raise InputError(f"{folder.name}: {patient}_{suffix}.nii.gz is missing.")
            return None
        v = read_nifti(p, as_labels=labels)
        v.name = f"{patient} {name}"
        return v

    cine = load("4d", "cine (4D)", False, False)
    ed_img = load(f"frame{ed:02d}", f"ED image (frame {ed:02d})", False, cine is None)
    es_img = load(f"frame{es:02d}", f"ES image (frame {es:02d})", False, cine is None)
    if cine is not None and (ed_img is None or es_img is None):
        nb = cine.data.shape[0]
        for number in (ed, es):
            if not 1 <= number <= nb:
                raise InputError(f"{folder.name}: frame {number} is outside the cine's 1..{nb}.")
        ed_img = ed_img or _frame_of(cine, ed, f"{patient} ED image (frame {ed:02d})")
        es_img = es_img or _frame_of(cine, es, f"{patient} ES image (frame {es:02d})")
    return AcdcPatient(
        patient,
        info,
        ed_img,
        es_img,
        load(f"frame{ed:02d}_gt", "ED labels", True, False),
        load(f"frame{es:02d}_gt", "ES labels", True, False),
        cine,
    )


def write_acdc_patient(
    folder: str | Path,
    *,
    cine: Volume,
    labels: Volume | None,
    ed_index: int,
    es_index: int,
    info: dict[str, object] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write one patient folder in the ACDC layout from a 4D cine (and optional 4D labels).

    `ed_index`/`es_index` are 0-based; files and Info.cfg use ACDC's 1-based frame numbers.
    Also writes `<patient>_4d_gt.nii.gz` (labels of every frame) when labels are given.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    patient = _patient_id(folder)
    nb = cine.data.shape[0]
    lines = {"ED": ed_index + 1, "ES": es_index + 1, "NbFrame": nb, **(info or {})}
    written = []
    for index in (ed_index, es_index):
        stem = f"{patient}_frame{index + 1:02d}"
        written.append(write_nifti(_frame_of(cine, index + 1), folder / f"{stem}.nii.gz",
                                   overwrite=overwrite))
        if labels is not None:
            written.append(write_nifti(_frame_of(labels, index + 1), folder / f"{stem}_gt.nii.gz",
                                       overwrite=overwrite))
    written.append(write_nifti(cine, folder / f"{patient}_4d.nii.gz", overwrite=overwrite))
    if labels is not None:
        written.append(write_nifti(labels, folder / f"{patient}_4d_gt.nii.gz", overwrite=overwrite))
    info_path = folder / INFO_FILE
    if info_path.exists() and not overwrite:
        raise InputError(f"{info_path} already exists; not overwritten.")
    with atomic_output(info_path, overwrite=overwrite) as tmp:
        tmp.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
    written.append(info_path)
    return written


def _frame_of(cine: Volume, number: int, name: str = "") -> Volume:
    return Volume(
        cine.data[number - 1].copy(), cine.geometry, cine.is_labels, name or cine.name,
        None, cine.source, list(cine.warnings),
    )


def _patient_id(folder: Path) -> str:
    m = re.match(r"(patient\d+)", folder.name)
    return m.group(1) if m else folder.name
