"""NIfTI/Analyze header -> geometry, decided as ITK 5.4's NiftiImageIO (SimpleITK 2.5) does.

Rules (ITK's NiftiImageIO + nifti1_io + ImageFileReader; SimpleITK shows the same):
- spacing comes from pixdim[1..3] (never from the sform column norms); a zero or non-finite
  pixdim becomes 1; a negative one gives |pixdim| and flips that axis' direction.
- spatial units scale spacing AND origin to mm (metre x1000, micron x0.001, unknown = mm);
  time units scale pixdim[4] to seconds.
- both codes 0 (and every Analyze 7.5 file): origin 0, identity LPS direction.
- otherwise the sform wins when it is an invertible affine whose normalised 3x3 is orthonormal
  and (no qform, or sform_code 1, or it agrees with the qform); else the qform is used.
- direction = normalised columns of the chosen matrix (RAS -> LPS), origin its translation.
- ITK refuses a non-orthonormal sform without a qform. We open it as ITK's permissive mode
  (ITK_NIFTI_SFORM_PERMISSIVE) does: the 3x3 becomes its closest rotation U V^T. A singular
  sform without a qform (refused even there) opens with identity direction and the sform's
  translation as origin. Both say so in the warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import Geometry

_F32_EPS = float(np.finfo(np.float32).eps)
_SPACE_SCALE = {1: 1e3, 2: 1.0, 3: 1e-3}  # NIFTI_UNITS_METER, _MM, _MICRON
_SPACE_NAME = {1: "metres", 3: "microns"}
_TIME_SCALE = {8: 1.0, 16: 1e-3, 24: 1e-6}  # NIFTI_UNITS_SEC, _MSEC, _USEC
_LPS = np.array([-1.0, -1.0, 1.0])


@dataclass
class NiftiGeometry:
    """What the header says: 3D geometry in array order ([Z,] Y, X), time step, choice made."""

    geometry: Geometry
    time_spacing: float | None
    source: str  # "sform", "qform", "none", "sform-polar" or "sform-singular"
    warnings: list[str] = field(default_factory=list)


def _f32(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return a.astype(np.float32)


def _fixed(x: float) -> float:
    """nifti1_io's FIXED_FLOAT: non-finite -> 0."""
    return float(x) if np.isfinite(x) else 0.0


def quatern_to_mat44(b, c, d, qx, qy, qz, dx, dy, dz, qfac) -> np.ndarray:
    """nifti1_io's quaternion -> 4x4 (float32), non-positive voxel sizes taken as 1."""
    b, c, d = (float(v) for v in (b, c, d))
    a = 1.0 - (b * b + c * c + d * d)
    if a < 1e-7:  # 180 degree rotation: renormalise (b, c, d)
        a = 1.0 / np.sqrt(b * b + c * c + d * d)
        b, c, d, a = b * a, c * a, d * a, 0.0
    else:
        a = np.sqrt(a)
    scale = np.array([v if v > 0 else 1.0 for v in (dx, dy, dz)])
    if qfac < 0:
        scale[2] = -scale[2]
    r = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    m = np.eye(4)
    m[:3, :3] = r * scale[None, :]
    m[:3, 3] = (qx, qy, qz)
    return _f32(m)


def _is_affine(m: np.ndarray) -> bool:
    """ITK's IsAffine: bottom row (0, 0, 0, 1) and an invertible matrix."""
    m = m.astype(np.float64)
    if abs(m[3, 3] - 1.0) + np.abs(m[3, :3]).sum() > _F32_EPS:
        return False
    if not np.all(np.isfinite(m)):
        return False
    s = np.linalg.svd(m, compute_uv=False)
    return bool(s[0] > 0 and s[-1] / s[0] > np.finfo(np.float64).eps)


def _orthonormal_after_normalising(r: np.ndarray) -> bool:
    norms = np.linalg.norm(r, axis=0)
    if np.any(norms == 0):
        return False
    n = (r / norms[None, :]).astype(np.float32).astype(np.float64)
    return bool(np.abs(n @ n.T - np.eye(3)).max() <= 1e-4)


def _very_similar(sto: np.ndarray, qto: np.ndarray) -> bool:
    """ITK's SVD comparison of a sform and a qform that are both set."""
    us, ws, _ = np.linalg.svd(sto[:3, :3].astype(np.float64))
    uq, wq, _ = np.linalg.svd(qto[:3, :3].astype(np.float64))
    candidate = us @ np.linalg.inv(uq)
    return bool(
        np.abs(ws - wq).max() <= 1e-4
        and np.abs(candidate - np.eye(3)).max() <= 1e-4
        and np.abs(sto[:3, 3] - qto[:3, 3]).max() <= 1e-4
        and np.abs(sto[3] - qto[3]).max() <= 1e-4
    )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def geometry_from_header(hdr: Mapping[str, Any], *, is_nifti: bool = True) -> NiftiGeometry:
    """Decide geometry from raw header fields (a nibabel header or a dict of its fields)."""
    dim = [int(v) for v in np.asarray(hdr["dim"]).ravel()[:8]]
    ndim = min(max(dim[0], 1), 7)
    raw_pix = _f32(np.asarray(hdr["pixdim"]).ravel()[:8])
    pix = raw_pix.astype(np.float64)
    notes: list[str] = []

    bad = [i for i in range(1, 4) if not np.isfinite(pix[i]) or pix[i] == 0]
    for i in range(1, 8):
        if not np.isfinite(pix[i]) or pix[i] == 0:  # nifti1_io; beyond dim[0] ours, harmless
            pix[i] = 1.0
    if bad:
        notes.append(
            f"pixdim{_fmt(raw_pix[1:4])} has zero or invalid voxel sizes; 1 mm used there as ITK does"
        )
    negative = [i - 1 for i in range(1, 4) if pix[i] < 0]
    if negative:
        notes.append(
            f"pixdim{_fmt(raw_pix[1:4])} has negative voxel sizes; their absolute value is used "
            "and those axes are flipped, as ITK does"
        )

    units = int(hdr["xyzt_units"]) if "xyzt_units" in hdr else 0
    space_scale = _SPACE_SCALE.get(units & 0x07, 1.0) if is_nifti else 1.0
    time_scale = _TIME_SCALE.get(units & 0x38, 1.0) if is_nifti else 1.0
    if space_scale != 1.0:
        notes.append(
            f"spatial units are {_SPACE_NAME[units & 0x07]}: spacing and origin converted to mm "
            "as ITK does"
        )

    dx, dy, dz = (float(v) for v in pix[1:4])
    qcode = int(hdr["qform_code"]) if is_nifti else 0
    scode = int(hdr["sform_code"]) if is_nifti else 0
    qcode, scode = max(qcode, 0), max(scode, 0)
    if qcode > 0:
        qfac = -1.0 if raw_pix[0] < 0 else 1.0
        qto = quatern_to_mat44(
            *(_fixed(hdr[k]) for k in ("quatern_b", "quatern_c", "quatern_d")),
            *(_fixed(hdr[k]) for k in ("qoffset_x", "qoffset_y", "qoffset_z")),
            dx, dy, dz, qfac,
        )
    else:
        qto = _f32(np.diag([dx, dy, dz, 1.0]))
    if scode > 0:
        rows = [np.asarray(hdr[k], dtype=np.float64).ravel()[:4] for k in ("srow_x", "srow_y", "srow_z")]
        sto = _f32(np.vstack([*rows, [0.0, 0.0, 0.0, 1.0]]))
    else:
        sto = np.zeros((4, 4), np.float32)

    if qcode == 0 and scode == 0:
        mat, source = None, "none"
    else:
        mat, source = _choose(sto, qto, qcode, scode, (dx, dy, dz)[: min(ndim, 3)], notes)

    if mat is None:
        direction_xyz = np.eye(3)
        origin_xyz = np.zeros(3)
    else:
        m = mat.astype(np.float64)
        cols = m[:3, :3] * _LPS[:, None]
        norms = np.linalg.norm(cols, axis=0)
        direction_xyz = cols / np.where(norms == 0, 1.0, norms)[None, :]
        origin_xyz = m[:3, 3] * _LPS
    if source == "sform-singular":
        direction_xyz = np.eye(3)
    spacing_xyz = pix[1:4] * space_scale
    origin_xyz = origin_xyz * space_scale
    for axis in negative:  # ImageFileReader: |spacing| and a flipped direction column
        spacing_xyz[axis] = -spacing_xyz[axis]
        direction_xyz[:, axis] = -direction_xyz[:, axis]

    geometry = Geometry.from_itk(tuple(spacing_xyz), tuple(origin_xyz), tuple(direction_xyz.ravel()))
    time_spacing = None
    if ndim >= 4 and dim[4] > 1 and np.isfinite(raw_pix[4]) and raw_pix[4] != 0:
        time_spacing = abs(float(raw_pix[4])) * time_scale
    warnings = ["; ".join(notes)] if notes else []
    return NiftiGeometry(geometry, time_spacing, source, warnings)


def _choose(sto, qto, qcode, scode, pix, notes):
    """ITK's sform/qform choice; returns (4x4 float32 or None, source)."""
    s64, q64 = sto.astype(np.float64), qto.astype(np.float64)
    similar = bool(
        np.abs(s64[:3, :3] - q64[:3, :3]).max() <= 1e-5
        and np.abs(s64[:, 3] - q64[:, 3]).sum() <= 1e-7
        and np.abs(s64[3] - q64[3]).sum() <= 1e-7
    )
    prefer_sform = similar
    decomposable = False
    if not prefer_sform or scode != 0:
        decomposable = _is_affine(sto) and _orthonormal_after_normalising(s64[:3, :3])
        if decomposable:
            if qcode == 0 or scode == 1:
                prefer_sform = True
            else:
                prefer_sform = _very_similar(sto, qto)
    if prefer_sform:
        norms = np.linalg.norm(s64[:3, :3], axis=0)[: len(pix)]
        if np.any(np.abs(np.asarray(pix) - norms) > 1e-3):  # ITK's tolerance
            notes.append(
                f"the sform scales {_fmt(norms)} disagree with pixdim {_fmt(pix)}; spacing taken "
                "from pixdim and orientation from the sform, as ITK does"
            )
        elif qcode != 0 and not _close(sto, qto):
            notes.append(
                f"qform (code {qcode}) and sform (code {scode}) disagree; the sform is used, "
                "as ITK does"
            )
        return sto, "sform"
    if qcode != 0:
        if scode != 0:
            why = "disagrees with the qform" if decomposable else "is not orthonormal"
            notes.append(
                f"the sform (code {scode}) {why}; the qform (code {qcode}) is used for "
                "orientation and pixdim for spacing, as ITK does"
            )
        return qto, "qform"
    # ITK refuses this file; see the module docstring
    r = sto[:3, :3].astype(np.float64)
    u, w, vt = np.linalg.svd(r)
    if np.all(np.isfinite(r)) and w[-1] > 1e-8:
        polar = np.eye(4)
        polar[:3, :3] = (u @ vt).T  # what ITK's permissive mode yields (checked against it)
        polar[:3, 3] = s64[:3, 3]
        notes.append(
            "the sform is sheared (not orthonormal) and there is no qform: ITK refuses this file "
            "unless ITK_NIFTI_SFORM_PERMISSIVE is set; opened as that mode does, with the "
            "sform's closest rotation and pixdim spacing"
        )
        return _f32(polar), "sform-polar"
    notes.append(
        "the sform is singular and there is no qform: ITK refuses this file; opened with "
        "identity orientation, the sform's translation as origin and pixdim spacing"
    )
    out = np.eye(4)
    out[:3, 3] = np.where(np.isfinite(s64[:3, 3]), s64[:3, 3], 0.0)
    return _f32(out), "sform-singular"


def _close(sto: np.ndarray, qto: np.ndarray) -> bool:
    """Same placement within float32 header precision (rotation 1e-4, offset 1e-3 mm)."""
    s, q = sto.astype(np.float64), qto.astype(np.float64)
    scale = max(np.abs(q[:3, :3]).max(), 1.0)
    return bool(
        np.abs(s[:3, :3] - q[:3, :3]).max() <= 1e-4 * scale
        and np.abs(s[:3, 3] - q[:3, 3]).max() <= 1e-3
    )
