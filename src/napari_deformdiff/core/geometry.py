"""Where a voxel array sits in patient space, and conversions to ITK, NIfTI and napari.

Conventions:
- Everything here is in ARRAY-AXIS ORDER ([Z,] Y, X), the order of numpy arrays read by
  SimpleITK and of napari layers. ITK stores spacing/origin/direction in (x, y[, z]) order and
  NIfTI in (i, j, k): the converters reverse axes at that boundary and nowhere else.
- Physical space is LPS millimetres (ITK/DICOM), with world axes also listed in reversed order
  (S, P, L for 3D), so an axis-aligned volume has world = spacing * index + origin per axis.
- `direction[:, k]` is the unit world vector of array axis k (columns as in ITK).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Geometry:
    """Spatial placement of an n-D grid (n = 2 or 3), array-axis order, LPS mm.

    `embedding` is set for 2D grids that came from a single-slice 3D file: it keeps the full 3D
    geometry so writers can put the slice back where it was.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray = field(repr=False)
    embedding: Geometry | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.spacing)
        if n not in (2, 3):
            raise ValueError(f"geometry must be 2D or 3D, got {n} spacing values")
        direction = np.asarray(self.direction, dtype=np.float64)
        if len(self.origin) != n or direction.shape != (n, n):
            raise ValueError(
                f"inconsistent geometry: spacing {self.spacing}, origin {self.origin}, "
                f"direction shape {direction.shape}"
            )
        if not all(np.isfinite(self.spacing)) or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")
        if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
            raise ValueError("direction matrix is singular or not finite")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        direction = direction.copy()
        direction.flags.writeable = False
        object.__setattr__(self, "direction", direction)

    @classmethod
    def identity(cls, ndim: int, spacing=None) -> Geometry:
        spacing = tuple(spacing) if spacing is not None else (1.0,) * ndim
        return cls(spacing, (0.0,) * ndim, np.eye(ndim))

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    def index_to_world(self) -> np.ndarray:
        """(n+1)x(n+1) homogeneous matrix: array index -> world (array-order LPS) mm."""
        n = self.ndim
        m = np.eye(n + 1)
        m[:n, :n] = self.direction * np.asarray(self.spacing)[None, :]
        m[:n, n] = self.origin
        return m

    @classmethod
    def from_index_to_world(cls, matrix: np.ndarray) -> Geometry:
        matrix = np.asarray(matrix, dtype=np.float64)
        n = matrix.shape[0] - 1
        linear = matrix[:n, :n]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0):
            raise ValueError("index-to-world matrix has a zero column")
        return cls(tuple(spacing), tuple(matrix[:n, n]), linear / spacing[None, :])

    def almost_equal(self, other: Geometry, *, rtol: float = 1e-4, atol_mm: float = 1e-3) -> bool:
        if self.ndim != other.ndim:
            return False
        return bool(
            np.allclose(self.spacing, other.spacing, rtol=rtol)
            and np.allclose(self.origin, other.origin, atol=atol_mm)
            and np.allclose(self.direction, other.direction, atol=rtol)
        )

    def describe(self) -> str:
        fmt = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"  # noqa: E731
        oblique = "" if np.allclose(self.direction, np.eye(self.ndim)) else ", oblique"
        return f"spacing {fmt(self.spacing)} mm, origin {fmt(self.origin)} mm{oblique}"

    # --- ITK (SimpleITK) ------------------------------------------------------------------
    @classmethod
    def from_itk(cls, spacing, origin, direction) -> Geometry:
        """From SimpleITK's (x, y[, z]) spacing/origin and row-major flat direction."""
        n = len(spacing)
        d = np.asarray(direction, dtype=np.float64).reshape(n, n)
        return cls(tuple(spacing)[::-1], tuple(origin)[::-1], d[::-1, ::-1])

    def to_itk(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        d = self.direction[::-1, ::-1]
        return self.spacing[::-1], self.origin[::-1], tuple(d.ravel().tolist())

    # --- NIfTI (nibabel) --------------------------------------------------------------------
    @classmethod
    def from_nifti_affine(cls, affine: np.ndarray) -> Geometry:
        """From a NIfTI (i, j, k) -> RAS affine, for data transposed to (k, j, i)."""
        lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
        m = np.eye(4)
        m[:3, :3] = lps[:3, :3][::-1, ::-1]
        m[:3, 3] = lps[:3, 3][::-1]
        return cls.from_index_to_world(m)

    def to_nifti_affine(self) -> np.ndarray:
        """The (i, j, k) -> RAS affine of this grid (a 2D grid is the k = 0 slice)."""
        g = self.as_3d()
        m = g.index_to_world()
        lps = np.eye(4)
        lps[:3, :3] = m[:3, :3][::-1, ::-1]
        lps[:3, 3] = m[:3, 3][::-1]
        return _RAS_TO_LPS @ lps

    # --- 2D <-> 3D ------------------------------------------------------------------------------
    def as_3d(self) -> Geometry:
        """3D geometry of this grid; a 2D grid becomes a single slice (its embedding if known)."""
        if self.ndim == 3:
            return self
        if self.embedding is not None:
            return self.embedding
        d = np.eye(3)
        d[1:, 1:] = self.direction
        return Geometry((1.0, *self.spacing), (0.0, *self.origin), d)

    def slice_2d(self) -> Geometry:
        """2D in-plane geometry of a single-slice 3D grid, remembering the 3D placement."""
        if self.ndim != 3:
            raise ValueError("slice_2d needs a 3D geometry")
        d2 = self.direction[1:, 1:]
        if not np.allclose(d2.T @ d2, np.eye(2), atol=1e-4):
            d2 = np.eye(2)  # an oblique slice: show it in its own plane
        return Geometry(self.spacing[1:], self.origin[1:], d2, embedding=self)

    # --- serialisation (napari layer metadata) ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.tolist(),
        }
        if self.embedding is not None:
            out["embedding"] = self.embedding.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        emb = d.get("embedding")
        return cls(
            tuple(d["spacing"]),
            tuple(d["origin"]),
            np.asarray(d["direction"], dtype=np.float64),
            embedding=cls.from_dict(emb) if emb else None,
        )
