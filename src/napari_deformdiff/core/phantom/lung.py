"""The breathing-lung phantom (CT look, HU): anatomy, motion and rendering."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .shapes import (
    _LUNG_MIN_FOV,
    _TEX_MARGIN_MM,
    _TEX_SPACING_MM,
    LUNG_DEFAULTS,
    _centred_axis,
    _circle_sdf,
    _ellipsoid_sdf,
    _lerp,
    _PhantomModel,
    _sample,
    _smootherstep,
    _soft,
    _Table,
    _texture_volume,
)


class _LungModel(_PhantomModel):
    kind, defaults, min_fov, es_fraction = "lung", LUNG_DEFAULTS, _LUNG_MIN_FOV, 0.5

    def _build(self) -> None:
        params, rng, U = self.params, self.rng, self.draw
        # --- anatomy (mm); fixed draw order
        self.body_lat = U("body_lateral_semi_mm", 100.0, 112.0)
        self.body_ap = U("body_ap_semi_mm", 75.0, 88.0)
        self.body_y = U("body_centre_y_mm", -3.0, 3.0)
        self.fat = U("fat_mm", 6.0, 12.0)
        self.wall = U("chest_wall_mm", 8.0, 12.0)
        cav_lat = self.body_lat - self.fat - self.wall
        cav_ap = self.body_ap - self.fat - self.wall
        self.cav_axes = (cav_ap, cav_lat)
        lungs = []
        for side, sign in (("left", 1.0), ("right", -1.0)):
            cx = sign * U(f"{side}_lung_centre_x_mm", 44.0, 52.0)
            cy = U(f"{side}_lung_centre_y_mm", 2.0, 10.0)
            ax = min(U(f"{side}_lung_semi_x_mm", 32.0, 40.0), cav_lat - abs(cx) - 3.0)
            ay = min(U(f"{side}_lung_semi_y_mm", 50.0, 60.0), cav_ap - abs(cy - self.body_y) - 3.0)
            apex = U(f"{side}_lung_apex_z_mm", 52.0, 64.0)
            depth = U(f"{side}_dome_depth_mm", 18.0, 28.0)
            params[f"{side}_lung_semi_x_mm"], params[f"{side}_lung_semi_y_mm"] = ax, ay  # as used
            lungs.append({"cx": cx, "cy": cy, "ax": ax, "ay": ay, "apex": apex, "depth": depth})
        dome_left = U("left_dome_z_mm", -42.0, -34.0)
        dome_right = dome_left + U("right_dome_above_left_mm", 6.0, 16.0)
        lungs[0]["dome"], lungs[1]["dome"] = dome_left, dome_right
        for lung in lungs:
            lung["zc"] = lung["dome"] - lung["depth"]  # costophrenic recess level
            lung["hz"] = lung["apex"] - lung["zc"]
        self.lungs = lungs
        hz = U("heart_semi_z_mm", 38.0, 45.0)
        hy = U("heart_semi_y_mm", 34.0, 40.0)
        hx = U("heart_semi_x_mm", 44.0, 52.0)
        self.heart = (dome_left + U("heart_above_dome_mm", 18.0, 28.0),
                      self.body_y - cav_ap + hy + U("heart_gap_mm", 2.0, 8.0),
                      U("heart_centre_x_mm", 8.0, 20.0), hz, hy, hx)
        self.medi = (self.body_y - 0.35 * cav_ap, 0.75 * cav_ap, U("mediastinum_semi_x_mm", 14.0, 20.0))
        spine_r = U("spine_radius_mm", 14.0, 18.0)
        spine_y = self.body_y + self.body_ap - U("spine_depth_mm", 28.0, 34.0)
        self.spine = (spine_y, spine_r)
        ao_r = U("aorta_radius_mm", 9.0, 12.0)
        self.aorta = (spine_y - spine_r - ao_r - 2.0, U("aorta_x_mm", 12.0, 20.0), ao_r)
        # --- motion
        self.amp = U("si_amplitude_mm", 10.0, 20.0)
        self.ap_amp = U("ap_amplitude_mm", 2.0, 6.0)
        self.lat = U("lateral_expansion", 0.01, 0.03)
        # --- appearance
        self.hu_lung = U("hu_lung", -880.0, -820.0)
        self.hu_soft = U("hu_soft_tissue", 30.0, 55.0)
        self.hu_fat = U("hu_fat", -110.0, -80.0)
        self.hu_vessel = U("hu_vessel", 40.0, 100.0)
        self.hu_nodule = U("hu_nodule", 10.0, 60.0)
        self.hu_marrow = U("hu_bone_marrow", 250.0, 400.0)
        self.hu_abd = U("hu_abdomen", 45.0, 65.0)
        self.sigma = U("noise_sigma_hu", 8.0, 20.0)
        self.tex_lung = U("lung_texture_hu", 15.0, 35.0)
        self.tex_soft = U("tissue_texture_hu", 4.0, 10.0)
        tex_scale = U("texture_scale_mm", 3.0, 6.0)
        # --- nodule (rejection-sampled inside one lung, away from its border)
        self.nodule = None
        has_nodule = bool(rng.random() < 0.8)
        nod_r = U("nodule_radius_mm", 4.0, 10.0)
        nod_side = int(rng.integers(0, 2))
        if has_nodule:
            lung = lungs[nod_side]
            for _ in range(2000):
                z = rng.uniform(lung["dome"], lung["apex"] - 10.0)
                y = lung["cy"] + rng.uniform(-1, 1) * lung["ay"]
                x = lung["cx"] + rng.uniform(-1, 1) * lung["ax"]
                pt = [np.array([z], np.float32), np.array([y], np.float32), np.array([x], np.float32)]
                sdfs = self._lung_sdfs(pt)[0]
                if float(sdfs[nod_side][0]) < -(nod_r + 6.0):
                    self.nodule = (float(z), float(y), float(x), nod_r)
                    break
        params["has_nodule"] = self.nodule is not None
        params["nodule_side"] = ("left", "right")[nod_side] if self.nodule else "none"
        if self.nodule:
            params["nodule_z_mm"], params["nodule_y_mm"], params["nodule_x_mm"] = self.nodule[:3]
        vessel_seed = int(rng.integers(0, 2**63 - 1))
        tex_seed = int(rng.integers(0, 2**63 - 1))
        noise_seed = int(rng.integers(0, 2**63 - 1))

        # --- motion profiles
        self.z_f0 = max(dome_left, dome_right) + self.amp + 2.0  # f = 1 up to the ES dome tops
        self.z_f1 = max(l["apex"] for l in lungs) + 15.0
        self.y_ant = self.body_y - self.body_ap
        self.y_post = spine_y
        self.plane_y = 0.5 * (lungs[0]["cy"] + lungs[1]["cy"])
        params["two_d"] = self.two_d
        if self.two_d:
            params["coronal_plane_y_mm"] = self.plane_y
            self.ap_amp = 0.0
            params["ap_amplitude_mm"] = 0.0
        for lung, side in zip(lungs, ("left", "right")):
            params[f"{side}_dome_top_z_mm"] = lung["dome"]
            params[f"{side}_dome_top_y_mm"] = lung["cy"]
            params[f"{side}_dome_top_x_mm"] = lung["cx"]

        # --- grid points
        if self.two_d:
            nz, nx = self.shape
            zz = _centred_axis(nz, self.spacing[0])[:, None]
            xx = _centred_axis(nx, self.spacing[1])[None, :]
            P = [np.broadcast_to(zz, self.shape), np.full(self.shape, self.plane_y, np.float32),
                 np.broadcast_to(xx, self.shape)]
            self.tex_axes = (0, 2)
        else:
            nz, ny, nx = self.shape
            zz = _centred_axis(nz, self.spacing[0])[:, None, None]
            yy = _centred_axis(ny, self.spacing[1])[None, :, None]
            xx = _centred_axis(nx, self.spacing[2])[None, None, :]
            P = [np.broadcast_to(zz, self.shape), np.broadcast_to(yy, self.shape),
                 np.broadcast_to(xx, self.shape)]
            self.tex_axes = (0, 1, 2)
        self.P = [np.ascontiguousarray(p, dtype=np.float32) for p in P]
        self.edge = float(np.prod(self.spacing) ** (1.0 / len(self.spacing)))
        # z-only profiles of the map (tables, 0.1 mm)
        self.ztab = _Table(-400.0, 0.1, 8001)
        self.f_tab = 1.0 - _smootherstep((self.ztab.grid() - self.z_f0) / (self.z_f1 - self.z_f0))
        if np.any(np.diff(self.f_tab) > 0):  # pragma: no cover
            raise RuntimeError("internal: SI profile must be non-increasing")

        tex_rng = np.random.default_rng(tex_seed)
        tex_coords = [self.P[k] for k in self.tex_axes]
        self.tex, self.tex_origin = _texture_volume(tex_rng, tex_coords, tex_scale)
        self.vessels = self._vessel_volume(np.random.default_rng(vessel_seed), tex_coords)
        self.noise_rng = np.random.default_rng(noise_seed)

    # ------------------------------------------------------------------ anatomy
    def _lung_sdfs(self, X):
        Z, Y, Xx = X
        hz_, hy_, hx_ = self.heart[3:]
        sdf_heart = _ellipsoid_sdf(
            (Z - np.float32(self.heart[0]), Y - np.float32(self.heart[1]), Xx - np.float32(self.heart[2])),
            (hz_, hy_, hx_))
        my, may, max_ = self.medi
        sdf_medi = _ellipsoid_sdf((Y - np.float32(my), Xx), (may, max_))
        sy, sr = self.spine
        sdf_spine = _circle_sdf(Y - np.float32(sy), Xx, sr)
        ay, ax, ar = self.aorta
        sdf_ao = _circle_sdf(Y - np.float32(ay), Xx - np.float32(ax), ar)
        sdf_cav = _ellipsoid_sdf((Y - np.float32(self.body_y), Xx), self.cav_axes)
        excl = np.minimum(np.minimum(sdf_heart - 3.0, sdf_medi),
                          np.minimum(sdf_spine - 4.0, sdf_ao - 3.0))
        out = []
        for lung in self.lungs:
            dy = Y - np.float32(lung["cy"])
            dx = Xx - np.float32(lung["cx"])
            sdf_e = _ellipsoid_sdf((Z - np.float32(lung["zc"]), dy, dx), (lung["hz"], lung["ay"], lung["ax"]))
            qy = dy * np.float32(1.0 / lung["ay"] ** 2)
            qx = dx * np.float32(1.0 / lung["ax"] ** 2)
            dome = np.float32(lung["dome"]) - np.float32(lung["depth"]) * (dy * qy + dx * qx)
            grad2 = np.float32(4.0 * lung["depth"] ** 2) * (qy * qy + qx * qx)
            sdf_d = (dome - Z) / np.sqrt(1.0 + grad2)
            s = np.maximum(np.maximum(sdf_e, sdf_d), np.maximum(-excl, sdf_cav + 1.0))
            out.append(s)
        return out, sdf_heart, sdf_spine, sdf_ao, sdf_cav

    def _vessel_volume(self, rng, coords):
        """Vessel density (0..1) on the texture grid: branching tubes from each hilum + blobs."""
        h = _TEX_SPACING_MM
        axes_1d = []
        for c in coords:
            lo = float(np.min(c)) - _TEX_MARGIN_MM
            n = int(math.ceil((float(np.max(c)) + _TEX_MARGIN_MM - lo) / h)) + 1
            axes_1d.append(lo + h * np.arange(n, dtype=np.float64))
        grid_axes = dict(zip(self.tex_axes, axes_1d))
        fixed = {k: float(self.P[k].flat[0]) for k in range(3) if k not in grid_axes}
        vol = np.zeros([len(a) for a in axes_1d], np.float32)

        def capsule(a, b, rad):
            lo = np.minimum(a, b) - rad - 2 * h
            hi = np.maximum(a, b) + rad + 2 * h
            sl, sub = [], []
            for k in range(3):
                if k in fixed:
                    if not (lo[k] <= fixed[k] <= hi[k]):
                        return
                    continue
                ax = grid_axes[k]
                i0, i1 = np.searchsorted(ax, lo[k]), np.searchsorted(ax, hi[k])
                if i1 <= i0:
                    return
                sl.append(slice(i0, i1))
                sub.append(ax[i0:i1])
            mesh = np.meshgrid(*sub, indexing="ij")
            pts = []
            it = iter(mesh)
            for k in range(3):
                pts.append(np.full(mesh[0].shape, fixed[k]) if k in fixed else next(it))
            ab = b - a
            denom = max(float(ab.dot(ab)), 1e-9)
            tpar = np.clip(sum((pts[k] - a[k]) * ab[k] for k in range(3)) / denom, 0.0, 1.0)
            d2 = sum((pts[k] - (a[k] + tpar * ab[k])) ** 2 for k in range(3))
            val = np.clip((rad - np.sqrt(d2)) / h + 0.5, 0.0, 1.0).astype(np.float32)
            region = vol[tuple(sl)]
            np.maximum(region, val, out=region)

        for sign, lung in zip((1.0, -1.0), self.lungs):
            hilum = np.array([lung["dome"] + 0.45 * (lung["apex"] - lung["dome"]),
                              lung["cy"], lung["cx"] - sign * 0.55 * lung["ax"]])
            stack = []
            for _ in range(4):
                d = np.array([rng.uniform(-1, 0.6), rng.uniform(-0.7, 0.7), sign * rng.uniform(0.3, 1.0)])
                stack.append((hilum, d / np.linalg.norm(d), rng.uniform(3.5, 4.5), 0))
            while stack:
                start, d, rad, depth = stack.pop()
                length = rng.uniform(12.0, 22.0) * (0.85**depth)
                end = start + d * length
                capsule(start, end, rad)
                if depth < 4 and rad > 1.2:
                    for _ in range(2):
                        nd = d + rng.normal(0.0, 0.45, 3)
                        stack.append((end, nd / np.linalg.norm(nd), rad * 0.75, depth + 1))
            for _ in range(30):
                z = rng.uniform(lung["zc"], lung["apex"])
                p0 = np.array([z, lung["cy"] + rng.uniform(-1, 1) * lung["ay"],
                               lung["cx"] + rng.uniform(-1, 1) * lung["ax"]])
                dd = rng.normal(0.0, 1.0, 3)
                capsule(p0, p0 + 4.0 * dd / np.linalg.norm(dd), rng.uniform(0.8, 1.8))
        return ndimage.gaussian_filter(vol, 0.6).astype(np.float32)

    # ------------------------------------------------------------------ per frame
    def pulled(self, t: int):
        p = float(self.profile[t])
        if p == 0.0:
            return list(self.P), True
        Z, Y, Xx = self.P
        fz = _Table.lookup(self.f_tab, self.ztab.locate(Z))
        # 1) antero-posterior: anterior tissue moves posteriorly on expiration (det >= 1)
        if self.ap_amp > 0:
            hy = 1.0 - _smootherstep((Y - np.float32(self.y_ant)) / np.float32(self.y_post - self.y_ant))
            Y = Y - np.float32(self.ap_amp * p) * hy * (0.3 + 0.7 * fz)
        # 2) lateral: the chest narrows on expiration (det = 1 + e f(z) >= 1)
        Xx = Xx * (1.0 + np.float32(self.lat * p) * fz)
        # 3) cranio-caudal: bases move cranially (det = 1 - a f'(z) g >= 1, f non-increasing)
        sdf_cav = _ellipsoid_sdf((Y - np.float32(self.body_y), Xx), self.cav_axes)
        g = 1.0 - _smootherstep((sdf_cav + 2.0) / np.float32(self.fat + self.wall + 4.0))
        Z = Z - np.float32(self.amp * p) * fz * g
        return [Z, Y, Xx], False

    def render(self, t: int):
        X, is_ref = self.pulled(t)
        n = len(self.shape)
        axes = (0, 2) if self.two_d else (0, 1, 2)
        if is_ref:
            fld = np.zeros((n, *self.shape), np.float32)
        else:
            fld = np.stack([(X[a] - self.P[a]) * np.float32(1.0 / h) for a, h in zip(axes, self.spacing)])
        edge = self.edge
        Z, Y, Xx = X
        sdf_lungs, sdf_heart, sdf_spine, sdf_ao, sdf_cav = self._lung_sdfs(X)
        dy = Y - np.float32(self.body_y)
        sdf_body = _ellipsoid_sdf((dy, Xx), (self.body_ap, self.body_lat))
        sdf_sub = _ellipsoid_sdf((dy, Xx), (self.body_ap - self.fat, self.body_lat - self.fat))
        tex = _sample(self.tex, self.tex_origin, [X[a] for a in self.tex_axes])
        ves = _sample(self.vessels, self.tex_origin, [X[a] for a in self.tex_axes])
        m_body = _soft(sdf_body, edge)
        img = np.float32(-1000.0) + m_body * np.float32(self.hu_fat + 1000.0)
        soft_val = np.float32(self.hu_soft) + np.float32(self.tex_soft) * tex
        img = _lerp(img, soft_val, _soft(sdf_sub, edge))
        # abdomen below the diaphragm envelope
        dome_env = None
        for lung in self.lungs:
            dyl = Y - np.float32(lung["cy"])
            dxl = Xx - np.float32(lung["cx"])
            d = np.float32(lung["dome"]) - np.float32(lung["depth"] / lung["ay"] ** 2) * dyl * dyl \
                - np.float32(lung["depth"] / lung["ax"] ** 2) * dxl * dxl
            dome_env = d if dome_env is None else np.maximum(dome_env, d)
        img = _lerp(img, np.float32(self.hu_abd) + np.float32(self.tex_soft) * tex,
                    _soft(np.maximum(Z - dome_env + 3.0, sdf_cav), edge))
        img = _lerp(img, np.float32(700.0), _soft(sdf_spine, edge))
        img = _lerp(img, np.float32(self.hu_marrow), _soft(sdf_spine + 2.5, edge))
        img = _lerp(img, np.float32(self.hu_soft + 8.0), _soft(sdf_ao, edge))
        img = _lerp(img, np.float32(self.hu_soft + 5.0), _soft(sdf_heart, edge))
        sdf_lung = np.minimum(sdf_lungs[0], sdf_lungs[1])
        lung_val = np.float32(self.hu_lung) + np.float32(self.tex_lung) * tex
        lung_val = _lerp(lung_val, np.float32(self.hu_vessel), np.minimum(ves, 1.0))
        img = _lerp(img, lung_val, _soft(sdf_lung, edge))
        sdf_nod = None
        if self.nodule is not None:
            nz, ny, nx, nr = self.nodule
            dz_, dy_, dx_ = Z - np.float32(nz), Y - np.float32(ny), Xx - np.float32(nx)
            sdf_nod = np.sqrt(dz_ * dz_ + dy_ * dy_ + dx_ * dx_) - np.float32(nr)
            nod_val = np.float32(self.hu_nodule) + np.float32(self.tex_soft) * tex
            img = _lerp(img, nod_val, _soft(sdf_nod, edge))
        if self.noise:
            img = img + np.float32(self.sigma) * self.noise_rng.standard_normal(self.shape, dtype=np.float32)
        labels = np.zeros(self.shape, np.uint8)
        labels[sdf_lungs[1] < 0] = 2
        labels[sdf_lungs[0] < 0] = 1
        if sdf_nod is not None:
            labels[sdf_nod < 0] = 3
        return img.astype(np.float32, copy=False), fld, labels
