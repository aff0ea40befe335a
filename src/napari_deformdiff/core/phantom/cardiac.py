"""The beating-heart phantom (cine bSSFP look): anatomy, motion and rendering."""

from __future__ import annotations

import math

import numpy as np

from .shapes import (
    _CARDIAC_MIN_FOV,
    CARDIAC_DEFAULTS,
    _centred_axis,
    _circle_sdf,
    _ellipsoid_sdf,
    _ellipsoid_sdf_sq,
    _lerp,
    _PhantomModel,
    _sample,
    _smootherstep,
    _soft,
    _softplus,
    _Table,
    _texture_volume,
)


class _CardiacModel(_PhantomModel):
    kind, defaults, min_fov, es_fraction = "cardiac", CARDIAC_DEFAULTS, _CARDIAC_MIN_FOV, 0.35

    def _build(self) -> None:
        params, rng, U = self.params, self.rng, self.draw
        # --- anatomy (mm); the draw order is fixed: never reorder (reproducibility).
        self.a_r = U("lv_cavity_diameter_mm", 45.0, 55.0) / 2.0
        self.t_wall = U("lv_wall_mm", 8.0, 12.0)
        self.t_apex = self.t_wall * U("apex_wall_ratio", 0.7, 0.9)
        long_axis = U("long_axis_mm", 80.0, 88.0)
        self.l_base = U("base_above_equator_mm", 5.0, 12.0)
        self.a_l = long_axis - self.t_apex - self.l_base
        self.d_rv = U("rv_centre_offset_mm", 14.0, 24.0)
        rv_reach = U("rv_reach_mm", 52.0, 62.0)
        self.a_v_rv = rv_reach - self.d_rv
        self.a_w_rv = U("rv_half_width_mm", 42.0, 52.0)
        self.a_l_rv = (self.a_l + self.t_apex) * U("rv_length_ratio", 0.75, 0.90)
        self.t_rv = U("rv_wall_mm", 2.5, 4.0)
        psi = math.radians(U("inplane_angle_deg", 165.0, 255.0))
        tilt = math.radians(U("tilt_deg", 0.0, 4.0))
        tilt_az = math.radians(U("tilt_azimuth_deg", 0.0, 360.0))
        off_y = U("offset_y_mm", -4.0, 8.0)
        off_x = U("offset_x_mm", -8.0, 8.0)
        off_z = U("offset_z_mm", -1.5, 0.0)
        # --- motion
        ef = U("ejection_fraction", 0.40, 0.65)
        shortening = U("longitudinal_shortening", 0.10, 0.18)
        twist = math.radians(U("twist_deg", 4.0, 10.0))
        rv_disp = U("rv_free_wall_motion_mm", 7.0, 12.0)
        # --- appearance
        self.i_blood = U("intensity_blood", 0.85, 1.0)
        self.i_myo = U("intensity_myocardium", 0.18, 0.30)
        self.i_tissue = U("intensity_tissue", 0.32, 0.45)
        self.i_lung = U("intensity_lung", 0.03, 0.09)
        self.i_fat = U("intensity_fat", 0.70, 0.92)
        self.tex_strength = U("texture_strength", 0.04, 0.12)
        tex_scale = U("texture_scale_mm", 2.5, 5.0)
        self.sigma = U("noise_sigma", 0.015, 0.04)
        # --- torso (z-invariant)
        self.body_ap = U("body_ap_semi_mm", 110.0, 125.0)
        self.body_lat = U("body_lateral_semi_mm", 150.0, 175.0)
        self.body_y = U("anterior_skin_y_mm", -92.0, -82.0) + self.body_ap
        self.fat = U("fat_mm", 8.0, 15.0)
        lung_x = U("lung_centre_x_mm", 66.0, 78.0)
        lung_y = U("lung_centre_y_mm", 18.0, 32.0)
        self.lung_axes = (U("lung_semi_y_mm", 50.0, 62.0), U("lung_semi_x_mm", 35.0, 45.0))
        self.lung_centres = ((lung_y, lung_x), (lung_y, -lung_x))
        self.aorta = (U("aorta_y_mm", 45.0, 60.0), U("aorta_x_mm", 15.0, 30.0),
                      U("aorta_radius_mm", 10.0, 13.0))
        self.spine = (U("spine_y_mm", 78.0, 88.0), U("spine_radius_mm", 16.0, 20.0))
        tex_seed = int(rng.integers(0, 2**63 - 1))
        noise_seed = int(rng.integers(0, 2**63 - 1))

        # --- derived motion parameters
        self.beta_es = shortening / (1.0 - shortening)  # pull stretch along the long axis at ES
        self.c_es = math.sqrt((1.0 - ef) / (1.0 - shortening))  # ES/ED endocardial radius ratio
        self.rho = 0.5 * self.c_es * self.a_r  # near-axis length scale of the radial map
        self.twist_es = twist
        params["es_volume_ratio"] = 1.0 - ef
        params["endo_radius_ratio_es"] = self.c_es
        params["two_d"] = self.two_d
        if self.two_d:
            params["tilt_deg"] = 0.0  # a true short-axis slice: the long axis is through-plane
            tilt = 0.0
            self.beta_es = 0.0  # through-plane motion is not part of a 2D+t sequence
            params["area_ratio_es"] = self.c_es**2

        # --- heart frame: e_l (long axis, towards the base), e_v (towards the RV), e_w
        e_l = np.array([math.cos(tilt), math.sin(tilt) * math.sin(tilt_az),
                        math.sin(tilt) * math.cos(tilt_az)])
        e_v = np.array([0.0, math.sin(psi), math.cos(psi)])
        e_v = e_v - e_v.dot(e_l) * e_l
        e_v /= np.linalg.norm(e_v)
        e_w = np.cross(e_l, e_v)
        if self.two_d:  # tilt is 0: e_v and e_w lie in the (y, x) plane
            e_l = np.array([1.0, 0.0, 0.0])
            e_v = np.array([0.0, e_v[1], e_v[2]])
            e_w = np.array([0.0, e_w[1], e_w[2]])
        self.frame_vectors = (e_l, e_v, e_w)
        base_z = 41.9 + off_z  # base-plane centre: 8.5 mm below the top of the default 100.8 mm FOV
        centre = np.array([base_z, off_y, off_x]) - self.l_base * e_l  # LV equator centre
        self.l_mid = 0.5 * (self.l_base - self.a_l)  # mid-ventricular level (cavity)

        # --- grid points (physical mm, 3 components each broadcast to S)
        if self.two_d:
            ny, nx = self.shape
            yy = _centred_axis(ny, self.spacing[0])[:, None]
            xx = _centred_axis(nx, self.spacing[1])[None, :]
            z_plane = float(centre[0] + self.l_mid)
            P = [np.full(self.shape, z_plane, np.float32), np.broadcast_to(yy, self.shape),
                 np.broadcast_to(xx, self.shape)]
            params["slice_z_mm"] = z_plane
        else:
            nz, ny, nx = self.shape
            zz = _centred_axis(nz, self.spacing[0])[:, None, None]
            yy = _centred_axis(ny, self.spacing[1])[None, :, None]
            xx = _centred_axis(nx, self.spacing[2])[None, None, :]
            P = [np.broadcast_to(zz, self.shape), np.broadcast_to(yy, self.shape),
                 np.broadcast_to(xx, self.shape)]
        self.P = [np.ascontiguousarray(p, dtype=np.float32) for p in P]
        rel = [self.P[k] - np.float32(centre[k]) for k in range(3)]

        def dot(vec):
            return (rel[0] * np.float32(vec[0]) + rel[1] * np.float32(vec[1])
                    + rel[2] * np.float32(vec[2])).astype(np.float32)

        self.l0, self.v0, self.w0 = dot(e_l), dot(e_v), dot(e_w)
        self.r0sq = self.v0 * self.v0 + self.w0 * self.w0
        r0 = np.sqrt(self.r0sq)

        # --- 1D tables along the long axis (ED level l), 0.1 mm steps
        l_apex = -(self.a_l + self.t_apex)
        self.ltab = _Table(l_apex - 160.0, 0.1, int(round((self.l_base - l_apex + 320.0) / 0.1)))
        lt = self.ltab.grid()
        # Longitudinal pull displacement shape h(l): 0 below the apex, (l - apex) over the heart,
        # back to 0 well above the base. beta * h'(l) > -1 keeps the map folding-free.
        m = 5.0
        w_long = 70.0
        h_long = m * _softplus((lt - l_apex) / m) * (1.0 - _smootherstep((lt - self.l_base - 5.0) / w_long))
        slope = np.diff(h_long) / np.diff(lt)
        if 1.0 + self.beta_es * slope.min() <= 0.2:  # pragma: no cover - guaranteed by the ranges
            raise RuntimeError("internal: longitudinal map would fold")
        # Windows along l for the radial map (1 over the heart, 0 far above/below).
        win_lv = (_smootherstep((lt - (l_apex - 30.0)) / 25.0)
                  * (1.0 - _smootherstep((lt - (self.l_base + 5.0)) / 25.0)))
        rv_apex = -self.a_l_rv
        win_rv = (_smootherstep((lt - (rv_apex - 25.0)) / 20.0)
                  * (1.0 - _smootherstep((lt - (self.l_base + 5.0)) / 25.0)))
        # Squared ED endocardial radius per level, smoothly clamped to [apex, base].
        s = 3.0
        lc = -self.a_l + s * _softplus((lt + self.a_l) / s)
        lc = self.l_base - s * _softplus((self.l_base - lc) / s)
        Q = np.maximum(self.a_r**2 * (1.0 - (lc / self.a_l) ** 2), 0.0)
        self.Q_tab = Q * win_lv
        self.win_lv = win_lv
        self.win_rv = win_rv
        self.h_long = h_long
        # Twist angle profile: smoothly -1 at the apex to +1 at the base, windowed.
        self.twist_shape = (2.0 * _smootherstep((lt - l_apex) / (self.l_base - l_apex)) - 1.0) * win_lv

        # --- radial windows (functions of the in-plane radius r, mm)
        c2 = self.c_es**2
        d1_max = float(((1.0 - c2) * self.Q_tab + self.rho**2 * (1.0 / c2 - 1.0) * win_lv).max())
        R_epi = self.a_r + self.t_wall
        E = R_epi**2
        b = self.rho**2 + d1_max - E
        r_epi_es = math.sqrt((-b + math.sqrt(b * b + 4.0 * E * self.rho**2)) / 2.0)
        r_lv_disp_at_reach = rv_reach - math.sqrt(max(rv_reach**2 - d1_max, 1.0))
        r_rvo_es = rv_reach - max(rv_disp, r_lv_disp_at_reach)
        self.r_h0 = r_epi_es + 1.5
        self.r_h1 = max(r_rvo_es, self.r_h0 + 5.0)
        g_at = self.r_h1**2 / (self.r_h1**2 + self.rho**2)
        self.d2_max = max(rv_reach**2 - self.r_h1**2 - d1_max * g_at, 0.0)
        self.r_a = rv_reach + 4.0  # the LV radial contraction is full inside, decays outside
        self.w_a = 20.0
        self.w_h = 25.0
        self._check_radial(d1_max)
        params["rv_es_outer_radius_mm"] = self.r_h1

        self.G1r = (self._w_lv(r0) / (self.r0sq + np.float32(self.rho**2))).astype(np.float32)
        self.Hr = (self._h_rv(r0) / np.maximum(self.r0sq, np.float32(1e-6))).astype(np.float32)
        self.inv_r0 = (1.0 / np.maximum(r0, np.float32(1e-6))).astype(np.float32)
        self.w_twist = self._w_lv(r0).astype(np.float32)
        wr_long = (1.0 - _smootherstep((r0 - rv_reach - 2.0) / 25.0)).astype(np.float32)
        self.H0 = None if self.two_d else _Table.lookup(h_long, self.ltab.locate(self.l0)) * wr_long

        # --- texture and noise generators
        tex_rng = np.random.default_rng(tex_seed)
        self.tex_axes = (1, 2) if self.two_d else (0, 1, 2)
        self.tex, self.tex_origin = _texture_volume(
            tex_rng, [self.P[k] for k in self.tex_axes], tex_scale
        )
        self.noise_rng = np.random.default_rng(noise_seed)
        self.edge = float(np.prod(self.spacing) ** (1.0 / len(self.spacing)))

    # radial weight of the LV contraction (and twist): 1 inside r_a, 0 beyond r_a + w_a
    def _w_lv(self, r):
        return 1.0 - _smootherstep((r - self.r_a) / self.w_a)

    # radial profile of the RV free-wall contraction: 0 inside the ES LV epicardium, 1 at the
    # ES RV free wall, then back to 0
    def _h_rv(self, r):
        up = _smootherstep((r - self.r_h0) / (self.r_h1 - self.r_h0))
        return up * (1.0 - _smootherstep((r - self.r_h1) / self.w_h))

    def _check_radial(self, d1_max):
        """dR^2/dr = 2r + D1 (g w)' + D2 a h' > 0 for every D1 <= d1_max, D2 <= d2_max, a in [0,1]."""
        for _ in range(20):
            r = np.arange(0.02, 400.0, 0.02)
            g = r**2 / (r**2 + self.rho**2)
            gw = g * self._w_lv(r)
            h = self._h_rv(r)
            d_gw = np.diff(gw) / 0.02
            d_h = np.diff(h) / 0.02
            rm = 0.5 * (r[1:] + r[:-1])
            worst = 2.0 * rm + d1_max * np.minimum(d_gw, 0.0) + self.d2_max * np.minimum(d_h, 0.0)
            if (worst / (2.0 * rm)).min() > 0.2:
                return
            self.w_a *= 1.5
            self.w_h *= 1.5
        raise RuntimeError("internal: radial map would fold")  # pragma: no cover

    # ------------------------------------------------------------------ per frame
    def pulled(self, t: int):
        """Local heart coordinates (l, v, w) and physical coordinates of x + u_t(x)."""
        p = float(self.profile[t])
        if p == 0.0:
            return self.l0, self.v0, self.w0, self.r0sq, list(self.P), True
        c = 1.0 - (1.0 - self.c_es) * p
        c2 = c * c
        # 1) longitudinal: base towards apex
        if self.two_d:
            l1 = self.l0
        else:
            l1 = self.l0 + np.float32(self.beta_es * p) * self.H0
        # 2) twist about the long axis (determinant 1)
        where = self.ltab.locate(l1)
        theta = _Table.lookup(self.twist_shape, where)
        theta *= np.float32(self.twist_es * p)
        theta *= self.w_twist
        ct, st = np.cos(theta), np.sin(theta)
        v1 = self.v0 * ct - self.w0 * st
        w1 = self.v0 * st + self.w0 * ct
        # 3) radial: R^2 = r^2 + D1(l) g(r) w(r) + D2(l) a(phi) h(r)
        d1_tab = (1.0 - c2) * self.Q_tab + self.rho**2 * (1.0 / c2 - 1.0) * self.win_lv
        d1 = _Table.lookup(d1_tab, where)
        k2 = 1.0 + d1 * self.G1r
        if self.d2_max > 0:
            d2 = _Table.lookup(self.win_rv, where) * np.float32(self.d2_max * p)
            a = 0.5 * (1.0 + v1 * self.inv_r0)
            k2 += d2 * (a * a) * self.Hr
        k = np.sqrt(k2)
        v2 = v1 * k
        w2 = w1 * k
        e_l, e_v, e_w = self.frame_vectors
        du_l = l1 - self.l0
        du_v = v2 - self.v0
        du_w = w2 - self.w0
        X = []
        for axis in range(3):
            comp = du_v * np.float32(e_v[axis]) + du_w * np.float32(e_w[axis])
            if not self.two_d:
                comp += du_l * np.float32(e_l[axis])
            X.append(self.P[axis] + comp)
        return l1, v2, w2, k2 * self.r0sq, X, False

    def render(self, t: int):
        l, v, w, rsq, X, is_ref = self.pulled(t)
        n = len(self.shape)
        if is_ref:
            fld = np.zeros((n, *self.shape), np.float32)
        else:
            axes = (1, 2) if self.two_d else (0, 1, 2)
            fld = np.stack([(X[a] - self.P[a]) * np.float32(1.0 / h) for a, h in zip(axes, self.spacing)])
        edge = self.edge
        Y, Xx = X[1], X[2]
        # torso (z-invariant)
        dy = Y - np.float32(self.body_y)
        sdf_body = _ellipsoid_sdf((dy, Xx), (self.body_ap, self.body_lat))
        sdf_inner = _ellipsoid_sdf((dy, Xx), (self.body_ap - self.fat, self.body_lat - self.fat))
        m_body = _soft(sdf_body, edge)
        img = m_body * np.float32(self.i_fat)
        img = _lerp(img, np.float32(self.i_tissue), _soft(sdf_inner, edge))
        sdf_lung = None
        for (cy, cx) in self.lung_centres:
            s = _ellipsoid_sdf((Y - np.float32(cy), Xx - np.float32(cx)), self.lung_axes)
            sdf_lung = s if sdf_lung is None else np.minimum(sdf_lung, s)
        img = _lerp(img, np.float32(self.i_lung), _soft(np.maximum(sdf_lung, sdf_inner + 4.0), edge))
        ay, ax, ar = self.aorta
        sdf_ao = _circle_sdf(Y - np.float32(ay), Xx - np.float32(ax), ar)
        m_blood = _soft(sdf_ao, edge)
        img = _lerp(img, np.float32(self.i_blood), m_blood)
        sy, sr = self.spine
        img = _lerp(img, np.float32(0.5 * (self.i_tissue + self.i_myo)),
                    _soft(_circle_sdf(Y - np.float32(sy), Xx, sr), edge))
        # heart (local coordinates)
        cut = l - np.float32(self.l_base)
        lsq = l * l
        sdf_endo = _ellipsoid_sdf_sq((lsq, rsq), (self.a_l, self.a_r))
        sdf_epi = _ellipsoid_sdf_sq((lsq, rsq), (self.a_l + self.t_apex, self.a_r + self.t_wall))
        sdf_cav = np.maximum(sdf_endo, cut)
        sdf_epi_t = np.maximum(sdf_epi, cut)
        dv = v - np.float32(self.d_rv)
        sdf_rv = _ellipsoid_sdf_sq((lsq, dv * dv, w * w), (self.a_l_rv, self.a_v_rv, self.a_w_rv))
        sdf_rv_cav = np.maximum(np.maximum(sdf_rv, -sdf_epi), cut)
        sdf_heart = np.minimum(sdf_epi_t, np.maximum(sdf_rv - np.float32(self.t_rv), cut))
        img = _lerp(img, np.float32(self.i_myo), _soft(sdf_heart, edge))
        m_lv = _soft(sdf_cav, edge)
        m_rv = _soft(sdf_rv_cav, edge)
        img = _lerp(img, np.float32(self.i_blood), m_lv)
        img = _lerp(img, np.float32(self.i_blood), m_rv)
        m_blood = np.maximum(m_blood, np.maximum(m_lv, m_rv))
        # texture (moves with the tissue), weaker in blood
        tex = _sample(self.tex, self.tex_origin, [X[a] for a in self.tex_axes])
        img *= 1.0 + np.float32(self.tex_strength) * tex * (1.0 - 0.6 * m_blood)
        if self.noise:
            sig = np.float32(self.sigma)
            n1 = self.noise_rng.standard_normal(self.shape, dtype=np.float32)
            n2 = self.noise_rng.standard_normal(self.shape, dtype=np.float32)
            re = img + sig * n1
            im = sig * n2
            img = np.sqrt(re * re + im * im)
        labels = np.zeros(self.shape, np.uint8)
        labels[sdf_rv_cav < 0] = 1
        labels[sdf_epi_t < 0] = 2
        labels[sdf_cav < 0] = 3
        return img.astype(np.float32, copy=False), fld, labels
