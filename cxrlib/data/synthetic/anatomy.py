"""Thorax anatomy of a synthetic frontal chest radiograph: subject -> tissue maps and lung masks.

Coordinates
-----------
Anatomy lives in a *patient frame* in centimetres, seen as on a displayed frontal radiograph:
``x`` grows to the image right (the patient's LEFT: standard radiographic display), ``y`` grows
downwards, ``x = 0`` is the midline and ``y = 0`` the top of the right lung apex. A
:class:`~cxrlib.data.synthetic.frame.PixelFrame` gives the patient coordinates of every pixel, and every
structure is evaluated on those arrays with numpy (no loop over pixels). Boundaries that depend
on the row (lung walls, mediastinum, heart, body outline) are tabulated once per image along
``y`` (:class:`Thorax`) and looked up per pixel.

Lung side 0 is the patient's right lung (image left, ``x < 0``), side 1 the left lung.

:func:`render_anatomy` returns float32/bool arrays of the image shape; ``density`` is the
projected attenuation in arbitrary units (0 = air outside the body, about 1 = mediastinum), so
the displayed image is an increasing function of it (lungs dark, bone bright: MONOCHROME2).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from .frame import PixelFrame, smooth_noise, upsample2

#: What a lung mask holds (``over_heart`` of :func:`lung_fields`, the preset's
#: ``mask_over_heart``). Radiologists draw lungs two ways: the JSRT (SCR) masks follow the heart
#: border and leave out the lung projected over the heart (False); the covid-chestxray-dataset's
#: masks, which ``../shared/real_sample`` follows in 10 of 12 images, run the medial border down
#: the mediastinum and the spine, the lung over the heart included (True). The lung U-Net for
#: corpora without masks trains on the second (preset ``lungseg``): it is the whole lung, so that
#: seed 001's masked view keeps the retrocardiac lower lobe, where COVID-19 opacities lie, and
#: seed 003's 30% rule measures the lungs rather than the heart. The study's cohorts keep the first.
MASK_CONVENTIONS = {False: "heart border (JSRT)", True: "lung over the heart included"}
#: Rows of the per-row boundary tables over y in [-0.6 H, 1.6 H] (about 0.05 cm apart).
TABLE_ROWS = 1024
#: Samples of the diaphragm tables over |x| in [0, 2 W].
DOME_SAMPLES = 1024


@dataclass(frozen=True)
class Subject:
    """Body shape of one synthetic patient, in centimetres unless stated otherwise.

    Built by :func:`sample_subject` (once per patient: shared by all the patient's images) and
    posed for each image by :func:`pose_subject` (inspiration, projection, supine).
    """

    sex: str
    age: float
    half_width: float        # W: midline to the right lung's lateral wall at its widest, cm
    left_width_ratio: float  # left lung lateral extent / right
    lung_height: float       # H: right apex to right costophrenic angle at average inspiration, cm
    apex_x: float            # apex distance from the midline, fraction of W
    lateral_shape: float     # exponent of the lateral lung wall (higher: fuller upper lung)
    dome_rise: float         # dome top above the costophrenic angle, fraction of H
    dome_x: float            # dome top distance from the midline, fraction of W
    dome_power: float        # lateral curvature exponent of the dome
    right_dome_lift: float   # right dome higher than the left, fraction of H
    cardiophrenic_depth: float  # medial fall of the dome, fraction of H
    mediastinum: float       # mediastinal half-width, fraction of W
    aortic_knob: float       # bulge of the aortic knob to the left, fraction of W
    heart_ctr: float         # cardiothoracic ratio (heart width / (2 W))
    heart_right_share: float  # share of the heart width right of the midline
    heart_top: float         # top of the heart silhouette, fraction of H
    spine_half_width: float  # cm
    rib_spacing: float       # posterior rib spacing at the top, cm
    rib_growth: float        # relative growth of the rib spacing per rib
    rib_width: float         # rib height / spacing
    rib_arch: float          # posterior rib curvature, cm
    ant_rib_slope: float     # anterior rib descent towards the midline, cm per cm
    clavicle_y: float        # medial end of the clavicles, fraction of H
    clavicle_rise: float     # rise of the clavicle to its lateral end, cm
    breast: float            # breast size 0..1 (0 for men)
    habitus: float           # soft-tissue thickness factor around 1
    arms: bool               # arms along the body, inside the field
    arm_gap: float           # air gap between chest wall and arm, cm
    vessel_spread: float     # branching angle of the vessel trees, radians
    heart_shape: tuple       # exponents of the right / left heart borders (<1: rounder)
    lung_air: float          # attenuation removed by a full depth of aerated lung
    vessel_contrast: float   # visibility of the lung vessels (about 1)
    neck_tissue: float = 1.0  # soft tissue of the neck and supraclavicular fossae (about 1)
    inspiration: float = 1.0  # lung height factor of this image
    projection: str = "PA"
    supine: bool = False


def sample_subject(rng: np.random.Generator, sex: str, age: float) -> Subject:
    """Draw the body shape of a patient of ``sex`` ("M" or "F") and ``age`` (years).

    The result is posed upright PA at average inspiration; see :func:`pose_subject`.
    """
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    male = sex == "M"
    old = float(np.clip((float(age) - 45.0) / 40.0, -1.0, 1.0))
    n, u = rng.normal, rng.uniform
    width = float(np.clip((14.4 if male else 13.0) + n(0, 0.9), 11.0, 17.5))
    height = float(np.clip((25.5 if male else 23.5) + n(0, 1.6) + 0.6 * old, 19.0, 31.0))
    adult = Subject(
        sex=sex, age=float(age), half_width=width, left_width_ratio=u(0.93, 1.01),
        lung_height=height, apex_x=u(0.45, 0.58), lateral_shape=u(0.9, 1.5),
        dome_rise=u(0.09, 0.17), dome_x=u(0.42, 0.58), dome_power=u(1.6, 2.6),
        right_dome_lift=u(0.02, 0.08), cardiophrenic_depth=u(0.04, 0.10),
        mediastinum=u(0.09, 0.14), aortic_knob=u(0.05, 0.10) + 0.04 * max(old, 0.0),
        heart_ctr=float(np.clip(n(0.45, 0.035) + 0.03 * old, 0.36, 0.58)),
        heart_right_share=u(0.27, 0.36), heart_top=u(0.40, 0.50),
        spine_half_width=u(1.8, 2.3) * (1.05 if male else 0.95),
        rib_spacing=u(2.0, 2.45) * height / 25.0, rib_growth=u(0.02, 0.05),
        rib_width=u(0.42, 0.52), rib_arch=u(1.8, 3.2), ant_rib_slope=u(0.45, 0.75),
        clavicle_y=u(0.14, 0.24), clavicle_rise=u(3.5, 6.5),
        breast=0.0 if male else float(np.clip(n(0.55, 0.25), 0.05, 1.0)),
        habitus=float(np.clip(n(1.0, 0.12), 0.7, 1.4)), arms=bool(rng.random() < 0.55),
        arm_gap=u(0.0, 2.5), vessel_spread=u(0.2, 0.34),
        heart_shape=(u(0.3, 0.5), u(0.45, 0.8)), lung_air=u(0.2, 0.5),
        vessel_contrast=u(0.7, 1.3), neck_tissue=u(0.55, 1.15),
    )
    return child_proportions(adult, float(age))


#: Age (years) from which a subject has adult proportions.
ADULT_FROM_AGE = 12.0


def child_proportions(subject: Subject, age: float) -> Subject:
    """``subject`` with the proportions of a child of ``age`` years (unchanged from
    :data:`ADULT_FROM_AGE` on; fully paediatric at 2 years and under).

    A young child's thorax is short for its width (lung height / half-width about 1.3 against
    1.8 in adults), the heart is larger (cardiothoracic ratio up to 0.6 in infants), the thymus
    widens the upper mediastinum, the ribs run nearly horizontally, and there are no breast
    shadows. No random draw is made, so an adult's body does not depend on this function.
    """
    child = float(np.clip((ADULT_FROM_AGE - age) / (ADULT_FROM_AGE - 2.0), 0.0, 1.0))
    if child == 0.0:
        return subject
    s = subject
    return replace(
        s, half_width=s.half_width * (1.0 - 0.42 * child),
        lung_height=s.lung_height * (1.0 - 0.6 * child),
        heart_ctr=float(min(s.heart_ctr + 0.09 * child, 0.62)),
        heart_top=s.heart_top - 0.08 * child,
        mediastinum=s.mediastinum + 0.06 * child,  # the thymus
        spine_half_width=s.spine_half_width * (1.0 - 0.45 * child),
        rib_spacing=s.rib_spacing * (1.0 - 0.45 * child),
        rib_arch=s.rib_arch * (1.0 - 0.6 * child), ant_rib_slope=s.ant_rib_slope * (1.0 - 0.5 * child),
        clavicle_rise=s.clavicle_rise * (1.0 - 0.5 * child),
        breast=s.breast * (1.0 - child), arm_gap=s.arm_gap * (1.0 - 0.5 * child),
    )


def pose_subject(subject: Subject, rng: np.random.Generator, projection: str,
                 supine: bool) -> Subject:
    """The subject as imaged in one study.

    AP magnifies the heart and mediastinum (the heart is far from the detector), projects the
    clavicles higher and flattens the posterior ribs; supine patients breathe shallower.
    """
    if projection not in ("AP", "PA"):
        raise ValueError(f"projection must be 'AP' or 'PA', got {projection!r}")
    insp = (rng.normal(1.0, 0.045) - (0.07 if supine else 0.0)
            - (0.02 if projection == "AP" else 0.0))
    changes = dict(inspiration=float(np.clip(insp, 0.8, 1.12)), projection=projection,
                   supine=bool(supine))
    if projection == "AP":
        changes.update(
            heart_ctr=float(min(subject.heart_ctr * rng.uniform(1.08, 1.2), 0.66)),
            mediastinum=subject.mediastinum * rng.uniform(1.05, 1.2),
            clavicle_y=subject.clavicle_y - rng.uniform(0.05, 0.11),
            clavicle_rise=subject.clavicle_rise * 0.5,
            rib_arch=subject.rib_arch * 0.6,
        )
    return replace(subject, **changes)


@dataclass(frozen=True)
class Thorax:
    """Posed geometry: boundary tables and landmarks of one image's thorax (cm).

    ``side_tables[name]`` has shape (2 * TABLE_ROWS,): the rows of side 0 (patient right) then
    side 1, each a distance from the midline (cm) at TABLE_ROWS rows evenly spaced over
    ``y_range``. Lungs are where
    ``med_air < |x| < lateral`` (and ``|x| > heart``, the heart border, when the mask stops
    there) and ``y`` is above the dome; ``lateral`` is -1 on rows without lung. ``row_tables`` (TABLE_ROWS,) do not depend on the side; ``dome`` (2 *
    DOME_SAMPLES,) is the diaphragm row over ``|x|`` in [0, ``u_max``].
    """

    subject: Subject
    height: float            # H of this image (lung height x inspiration), cm
    y_range: tuple
    u_max: float
    side_tables: dict
    row_tables: dict
    dome: np.ndarray
    width: tuple             # lateral lung wall at the costophrenic angle, per side, cm
    apex_y: tuple
    cp_y: tuple
    dome_y: tuple
    hilum: tuple             # ((u, y) right, (u, y) left), cm
    carina_y: float


def build_thorax(subject: Subject) -> Thorax:
    """Tabulate the lung walls, mediastinum, heart, rib cage, diaphragm and body outline."""
    s = subject
    H = s.lung_height * s.inspiration
    W = s.half_width
    y = np.linspace(-0.6 * H, 1.6 * H, TABLE_ROWS)
    width = (W, W * s.left_width_ratio)
    lift = s.right_dome_lift * H
    apex_y = (0.0, 0.01 * H)
    cp_y = (H, H + 0.5 * lift)
    dome_y = (cp_y[0] - s.dome_rise * H, cp_y[1] - s.dome_rise * H + 0.5 * lift)
    heart_width = s.heart_ctr * 2.0 * W
    heart_half = (s.heart_right_share * heart_width, (1.0 - s.heart_right_share) * heart_width)
    y_top = s.heart_top * H
    tabs = {k: [] for k in ("lateral", "med_air", "heart", "cage", "height")}
    hearts = []
    for side in (0, 1):
        a = s.apex_x * width[side]
        t = (y - apex_y[side]) / (cp_y[side] - apex_y[side])
        tc = np.clip(t, 0.0, 1.0)
        lateral = a + (width[side] - a) * np.sqrt(1.0 - (1.0 - tc) ** (2.0 * s.lateral_shape))
        tm = np.clip(tc / 0.2, 0.0, 1.0)
        apex_medial = a * (1.0 - np.sqrt(1.0 - (1.0 - tm) ** 2))
        mediast = np.full_like(y, s.mediastinum * W)
        if side == 1:  # aortic knob and pulmonary trunk on the patient's left
            mediast += s.aortic_knob * W * np.exp(-(((y - 0.22 * H) / (0.07 * H)) ** 2))
            mediast += 0.35 * s.aortic_knob * W * np.exp(-(((y - 0.36 * H) / (0.05 * H)) ** 2))
        else:  # superior vena cava
            mediast += 0.02 * W * np.exp(-(((y - 0.25 * H) / (0.12 * H)) ** 2))
        # right border: a round bulge (right atrium); left border: oblique (left ventricle)
        widest = y_top + (0.72 if side == 0 else 0.92) * (dome_y[side] - y_top)
        rise = np.clip((y - y_top) / (widest - y_top), 0.0, 1.0) ** (s.heart_shape[side])
        below = np.clip((y - widest) / (0.35 * H), 0.0, 1.0)
        heart = heart_half[side] * rise * (1.0 - 0.5 * below ** 2)
        heart[y < y_top] = 0.0
        hearts.append(heart)
        tabs["heart"].append(heart)
        med_air = np.maximum(apex_medial, mediast)
        tabs["med_air"].append(med_air)
        tabs["lateral"].append(np.where((t >= 0) & (t <= 1), lateral, -1.0))
        below_cp = np.clip((y - cp_y[side]) / H, 0.0, None)
        cage = np.where(t <= 1.0, lateral, width[side] * (1.0 + 0.05 * below_cp)) + 0.5
        tabs["cage"].append(np.maximum(cage, 0.3 * W))
        tabs["height"].append(tc)
    side_tables = {k: np.concatenate(v).astype(np.float32) for k, v in tabs.items()}
    # body outline (half-width, cm): neck, shoulders, chest wall, abdomen
    body_y = np.array([-0.6, -0.32, -0.22, -0.1, 0.02, 0.35, 1.0, 1.6]) * H
    body_w = np.array([0.42, 0.46, 0.7, 1.12, 1.27, 1.22, 1.2, 1.24]) * W
    body_w += np.array([0, 0, 0, 0.4, 0.9, 1.2, 1.6, 2.2]) * (s.habitus - 1.0) * 4.0
    row_tables = {
        "heart_r": hearts[0].astype(np.float32),
        "heart_l": hearts[1].astype(np.float32),
        "body": np.interp(y, body_y, body_w).astype(np.float32),
        # front-to-back thickness relative to the chest: thin neck, thicker abdomen; the neck
        # and supraclavicular soft tissue vary between patients (``neck_tissue``), from
        # nearly as grey as the aerated apices to brighter, so that the region above the
        # lungs is told from lung by its shape and bones rather than by its brightness
        "thickness": np.interp(y, np.array([-0.6, -0.25, -0.05, 0.15, 1.0, 1.6]) * H,
                               [0.45 * s.neck_tissue, 0.5 * s.neck_tissue,
                                0.65 * (0.4 + 0.6 * s.neck_tissue), 0.9, 1.0, 1.05]
                               ).astype(np.float32),
    }
    u_max = 2.0 * W
    u = np.linspace(0.0, u_max, DOME_SAMPLES)
    domes = []
    for side in (0, 1):
        d = s.dome_x * width[side]
        top, cp, w = dome_y[side], cp_y[side], width[side]
        lateral = top + (cp - top) * np.clip((u - d) / (w - d), 0.0, None) ** s.dome_power
        medial = top + s.cardiophrenic_depth * H * np.clip((d - u) / d, 0.0, None) ** 2
        domes.append(np.where(u > d, lateral, medial))
    dome = np.concatenate(domes).astype(np.float32)
    hilum = ((0.32 * W + 1.0, 0.47 * H), (0.30 * W + 1.0, 0.42 * H))
    return Thorax(subject=s, height=H, y_range=(float(y[0]), float(y[-1])), u_max=u_max,
                  side_tables=side_tables, row_tables=row_tables, dome=dome, width=width,
                  apex_y=apex_y, cp_y=cp_y, dome_y=dome_y, hilum=hilum, carina_y=0.31 * H)


@dataclass(frozen=True)
class _Lookup:
    """Per-pixel indices into the thorax tables (nearest sample)."""

    row: np.ndarray        # index into row tables
    side_row: np.ndarray   # index into side tables
    side_u: np.ndarray     # index into the dome table
    U: np.ndarray          # |x|, cm
    right: np.ndarray      # bool, x < 0


def _lookup(thorax: Thorax, X: np.ndarray, Y: np.ndarray) -> _Lookup:
    y0, y1 = thorax.y_range
    f = (Y - np.float32(y0)) * np.float32((TABLE_ROWS - 1) / (y1 - y0)) + np.float32(0.5)
    row = np.clip(f, 0, TABLE_ROWS - 1).astype(np.intp)
    U = np.abs(X)
    right = X < 0
    side = (~right).astype(np.intp)
    fu = U * np.float32((DOME_SAMPLES - 1) / thorax.u_max) + np.float32(0.5)
    side_u = np.minimum(fu, DOME_SAMPLES - 1).astype(np.intp) + side * DOME_SAMPLES
    return _Lookup(row=row, side_row=row + side * TABLE_ROWS, side_u=side_u, U=U, right=right)


def _soft_inside(dist_px):
    """Anti-aliased inside indicator from a signed distance in pixels (positive inside)."""
    return np.clip(dist_px + np.float32(0.5), 0.0, 1.0)


def lung_fields(thorax: Thorax, X: np.ndarray, Y: np.ndarray, look: _Lookup | None = None,
                over_heart: bool = False) -> dict:
    """Lung masks and depth profiles on a pixel grid.

    Parameters
    ----------
    thorax : posed geometry.
    X, Y : float32 (H, W) patient coordinates of the pixel centres, cm.
    look : table indices of these pixels, when already computed.
    over_heart : the mask convention (:data:`MASK_CONVENTIONS`): True includes the lung
        projected over the heart, False stops the left lung at the heart border.

    Returns
    -------
    dict of arrays shaped like ``X``: ``mask`` (bool, the lung fields: each lung in projection
    from the apex to the dome and from the mediastinum, or the heart border, to the lateral
    wall), ``side`` (int8: 0 right, 1 left, -1 outside
    the mask), ``air`` (float32 0..1, projected air depth, including the retrocardiac lung
    and the posterior recesses below the domes),
    ``lateralness`` (float32, 0 at the mediastinum, 1 at the lateral wall), ``height`` (float32, 0
    at the apex, 1 at the costophrenic angle), ``heart`` (float32 0..1, heart depth) and
    ``inside`` (float32, cm: positive inside the mask, its smallest distance to a border along x
    or y; the mask is ``inside > 0``).
    """
    L = look if look is not None else _lookup(thorax, X, Y)
    st, rt = thorax.side_tables, thorax.row_tables
    lateral = st["lateral"][L.side_row]
    med_air = st["med_air"][L.side_row]
    dome = thorax.dome[L.side_u]
    U = L.U
    H = np.float32(thorax.height)
    above_dome = Y < dome
    band = (U > med_air) & (U < lateral)
    medial = med_air if over_heart else np.maximum(
        med_air, st["heart"][L.side_row])
    inside = np.minimum(np.minimum(U - medial, lateral - U), dome - Y)
    mask = inside > 0
    lat = np.clip((U - med_air) / np.maximum(lateral - med_air, np.float32(1e-3)), 0.0, 1.0)
    # projected depth of aerated lung: it thins over a band at the walls (the chest wall and
    # the mediastinum are curved), so lung borders are soft on a radiograph rather than a step
    depth = np.clip(4.0 * lat * (1.0 - lat), 0.0, 1.0) ** np.float32(0.75)
    height = st["height"][L.side_row]
    # towards the dome the lung thins (the dome bulges forwards), then steps down where the
    # beam grazes the dome's top (the visible border); below it the posterior costophrenic
    # recess still holds some air, fading downwards: dark but outside the lung fields
    below = Y - dome
    vert = np.where(above_dome,
                    np.float32(0.45) + np.float32(0.55) * np.clip(-below / (0.06 * H), 0.0, 1.0),
                    np.float32(0.3) * np.exp(-below / (0.08 * H)) * (below < 0.3 * H))
    vert = vert * np.sqrt(np.clip(height / 0.06, 0.0, 1.0))
    air = depth * vert * band
    h_r, h_l = rt["heart_r"][L.row], rt["heart_l"][L.row]
    half = np.float32(0.5) * (h_r + h_l)
    centre = np.float32(0.5) * (h_l - h_r)
    q = np.clip(1.0 - ((X - centre) / np.maximum(half, np.float32(1e-3))) ** 2, 0.0, 1.0)
    # projected depth of a rounded heart: it thins towards its borders (an ellipsoid's chord)
    heart = np.sqrt(q) * ((half > 0.05) & (Y < dome + 0.04 * H))
    side = np.where(mask, (~L.right).astype(np.int8), np.int8(-1))
    return dict(mask=mask, side=side, air=air.astype(np.float32), lateralness=lat,
                height=height, heart=heart.astype(np.float32), inside=inside)


def _ribs(thorax: Thorax, X, Y, L: _Lookup, px_per_cm: float, rng) -> np.ndarray:
    """Posterior and anterior ribs of both sides (float32 bone depth 0..1)."""
    s = thorax.subject
    ppc = np.float32(px_per_cm)
    cage = thorax.side_tables["cage"][L.side_row]
    un = np.minimum(L.U / cage, np.float32(1.1))
    within = np.clip((1.03 - un) * 25.0, 0.0, 1.0)
    # posterior ribs: leave the spine, rise slightly, arch down to the lateral wall
    peak, arch_cm = 0.32, np.float32(s.rib_arch)
    un8 = (un * un) ** 4
    arch = arch_cm * (((un - peak) ** 2 - peak ** 2) / (1.0 - 2 * peak) + 1.2 * un8)
    slope = arch_cm * (2 * (un - peak) / (1.0 - 2 * peak) + 9.6 * un8 / np.maximum(un, 0.05)) / cage
    cos = 1.0 / np.sqrt(1.0 + slope * slope)
    start = np.float32(min(thorax.apex_y) - 1.4 * s.rib_spacing)
    # per-rib jitter of position and width, looked up by rib number
    n_tab = 24
    offs = rng.normal(0.0, 0.08, n_tab).astype(np.float32)
    wid = (s.rib_width * rng.uniform(0.85, 1.12, n_tab)).astype(np.float32)
    yy = (Y - arch - start) / np.float32(s.rib_spacing)
    g = np.float32(s.rib_growth)
    k = (np.sqrt(np.maximum(1.0 + 4.0 * g * yy, 0.0)) - 1.0) / (2.0 * g)
    kf = np.floor(k)
    ki = np.clip(kf, 0, n_tab - 1).astype(np.intp)
    frac = k - kf - offs[ki]
    band = wid[ki]
    spacing = np.float32(s.rib_spacing) * (1.0 + 2.0 * g * kf)
    d_px = np.minimum(frac, band - frac) * spacing * cos * ppc
    cortex = np.exp(-np.maximum(d_px, 0.0) / np.float32(max(0.1 * px_per_cm, 0.4)))
    medial_fade = np.clip((un - 0.12) * 12.5, 0.0, 1.0)
    n_ribs = 11.5 + (s.inspiration - 1.0) * 8
    keep = (k > 0.35) & (k < n_ribs) & (yy > 0)
    post = _soft_inside(d_px) * (0.4 + 0.6 * cortex) * (medial_fade * within * keep)
    # anterior ribs: from the lateral wall down towards the midline, fading medially (cartilage)
    top = np.float32(min(thorax.apex_y) + 0.3 * s.rib_spacing)
    sp_a = np.float32(1.45 * s.rib_spacing)
    ka = (Y - np.float32(s.ant_rib_slope) * (1.0 - un) * cage - top) / sp_a
    fa = ka - np.floor(ka)
    ca = np.float32(1.0 / np.sqrt(1.0 + s.ant_rib_slope ** 2))
    da = np.minimum(fa, 0.33 - fa) * (sp_a * ca * ppc)
    fade = np.clip((un - 0.38) * 4.0, 0.0, 1.0) * within * ((ka > 0.0) & (ka < 6.0))
    ant = _soft_inside(da) * (0.6 + 0.4 * np.exp(-np.maximum(da, 0.0) / 1.2)) * fade
    return (post + 0.3 * ant).astype(np.float32)


def _clavicles(thorax: Thorax, X, Y, px_per_cm: float) -> np.ndarray:
    """Both clavicles: S-shaped bones from the sternal notch up to the acromion (bone depth)."""
    s = thorax.subject
    W = s.half_width
    U = np.abs(X)
    u0, u1 = 0.14 * W, 1.22 * W
    p = np.clip((U - u0) / (u1 - u0), 0.0, 1.0)
    wave = np.float32(2 * np.pi) * p
    centre = s.clavicle_y * thorax.height - s.clavicle_rise * p - 0.6 * np.sin(wave)
    slope = (s.clavicle_rise + 0.6 * 2 * np.pi * np.cos(wave)) / (u1 - u0)
    half = (0.62 - 0.22 * p + 0.35 * (1.0 - p) ** 8) * (1.1 if s.sex == "M" else 1.0)
    d_px = (half - np.abs(Y - centre) / np.sqrt(1.0 + slope * slope)) * np.float32(px_per_cm)
    ends = (np.clip((U - u0) * px_per_cm + 0.5, 0.0, 1.0)
            * np.clip((u1 - U) * px_per_cm + 0.5, 0.0, 1.0))
    cortex = np.exp(-np.maximum(d_px, 0.0) / np.float32(max(0.12 * px_per_cm, 0.4)))
    return (_soft_inside(d_px) * ends * (0.5 + 0.5 * cortex)).astype(np.float32)


def _convex_distance(U, Y, pts) -> np.ndarray:
    """Signed distance (cm, positive inside) to a convex polygon ``pts`` ((k, 2), (u, y))."""
    area = 0.5 * np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1])
    if area < 0:
        pts = pts[::-1]
    d = None
    for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0)):
        nx, ny = -(y1 - y0), (x1 - x0)
        norm = np.hypot(nx, ny)
        di = ((U - np.float32(x0)) * np.float32(nx / norm)
              + (Y - np.float32(y0)) * np.float32(ny / norm))
        d = di if d is None else np.minimum(d, di)
    return d


def _scapulae(thorax: Thorax, X, Y, px_per_cm: float) -> np.ndarray:
    s = thorax.subject
    H, W = thorax.height, s.half_width
    med_top, med_bot = ((0.72 * W, 0.78 * W) if s.projection == "AP" else (1.0 * W, 1.06 * W))
    pts = np.array([[med_top, -0.02 * H], [med_bot, 0.58 * H], [1.32 * W, 0.1 * H],
                    [1.22 * W, -0.06 * H]])
    d = _convex_distance(np.abs(X), Y, pts) * np.float32(px_per_cm)
    rim = np.exp(-np.abs(d) / np.float32(max(0.2 * px_per_cm, 0.5)))
    return (_soft_inside(d) * 0.7 + 0.5 * rim * (d > -1)).astype(np.float32)


def _spine(thorax: Thorax, X, Y, px_per_cm: float) -> np.ndarray:
    s = thorax.subject
    H = thorax.height
    hw = np.float32(s.spine_half_width)
    ax = np.abs(X)
    v = (Y + np.float32(0.3 * H)) / np.float32(0.105 * H)
    fv = v - np.floor(v)
    body = _soft_inside((hw - ax) * np.float32(px_per_cm))
    disc = np.clip(np.abs(fv - 0.92) * 14.0, 0.0, 1.0)
    ped = np.sqrt(((ax - 0.72 * hw) / (0.22 * hw)) ** 2 + ((fv - 0.35) * 5.0) ** 2)
    pedicle = np.exp(-((ped - 1.0) ** 2) * 12.0)
    spinous = np.exp(-(X / (0.18 * hw)) ** 2 - ((fv - 0.65) / 0.15) ** 2)
    return (body * (0.6 + 0.4 * disc) + 0.3 * pedicle + 0.25 * spinous).astype(np.float32)


def _trachea(thorax: Thorax, X, Y, px_per_cm: float) -> np.ndarray:
    s = thorax.subject
    hw = 0.85 + (0.1 if s.sex == "M" else 0.0)
    ppc = np.float32(px_per_cm)
    xc = np.float32(-0.3)
    car = np.float32(thorax.carina_y)
    out = _soft_inside((hw - np.abs(X - xc)) * ppc) * (Y < car) * np.clip((car - Y) * 0.5, 0.3, 1.0)
    for sign, ang in ((-1, 0.55), (1, 0.75)):  # main bronchi: the right one is steeper
        dx, dy = np.float32(sign * np.sin(ang)), np.float32(np.cos(ang))
        along = (X - xc) * dx + (Y - car) * dy
        across = np.abs((X - xc) * dy - (Y - car) * dx)
        bron = (_soft_inside((0.7 - across) * ppc) * np.clip(1.0 - along / 4.5, 0.0, 1.0)
                * (along > 0))
        out = np.maximum(out, bron)
    return out.astype(np.float32)


def _body(thorax: Thorax, X, L: _Lookup, px_per_cm: float) -> np.ndarray:
    """Soft-tissue depth of the torso, neck and (optionally) arms; 0 outside the body."""
    s = thorax.subject
    ppc = np.float32(px_per_cm)
    hw = thorax.row_tables["body"][L.row]
    U = L.U
    r = U / hw
    skin = _soft_inside((hw - U) * ppc)
    tissue = np.maximum(np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0)), 0.25) * skin
    tissue *= thorax.row_tables["thickness"][L.row]
    if s.arms:
        a0 = hw + np.float32(s.arm_gap)
        aw = np.float32(4.0 + 6.0 * (s.habitus - 1.0))
        ra = np.clip((U - a0) / aw, 0.0, 1.0)
        arm = np.sqrt(np.clip(1.0 - (2 * ra - 1) ** 2, 0.0, 1.0)) * (U > a0)
        tissue = np.maximum(tissue, 0.55 * arm * _soft_inside((a0 + aw - U) * ppc))
    return tissue


def _humeri(thorax: Thorax, X, Y, px_per_cm: float) -> np.ndarray:
    s = thorax.subject
    W = s.half_width
    U = np.abs(X)
    ppc = np.float32(px_per_cm)
    cu, cy, r = 1.3 * W + 0.6 * s.arm_gap, -0.05 * thorax.height, 2.4 * min(W / 11.0, 1.0)
    head = _soft_inside((r - np.sqrt((U - cu) ** 2 + (Y - cy) ** 2)) * ppc)
    if not s.arms:
        return head.astype(np.float32)
    shaft = _soft_inside((1.1 - np.abs(U - (cu + 0.4))) * ppc) * (Y > cy)
    return np.maximum(head, shaft).astype(np.float32)


def _breasts(thorax: Thorax, X, Y) -> np.ndarray:
    s = thorax.subject
    H, W = thorax.height, s.half_width
    cu, cy = 0.62 * W, 0.74 * H + 0.06 * H * s.breast
    ru, ry = (0.55 + 0.2 * s.breast) * W, (0.22 + 0.1 * s.breast) * H
    r2 = ((np.abs(X) - cu) / ru) ** 2 + ((Y - cy) / ry) ** 2
    lower = np.sqrt(np.sqrt(np.clip(1.0 - r2, 0.0, 1.0)))
    fade_top = np.clip((Y - (cy - 0.9 * ry)) / (1.1 * ry), 0.0, 1.0)
    return (s.breast * lower * fade_top).astype(np.float32)


def vessel_tree_points(thorax: Thorax, rng: np.random.Generator, px_per_cm: float,
                       levels: int = 5):
    """Points along branching vessel trees grown from both hila (vectorised by generation).

    Each generation splits every branch in two (angle ``vessel_spread``), shorter and thinner.
    Points are spaced at most 0.8 pixel apart, so that splatted and blurred they draw lines.

    Returns
    -------
    x, y : float64 (n,) point positions, cm. mass : float64 (n,) vessel calibre (cm) times the
    point spacing (px), so that a splatted line holds its calibre per pixel of length.
    level : int (n,) generation (0 = trunks at the hilum).
    """
    H = thorax.height
    base = np.deg2rad(np.array([-80.0, -50.0, -20.0, 10.0, 35.0, 58.0, 80.0, 100.0]))
    n0 = 2 * base.size
    sign = np.repeat([-1.0, 1.0], base.size)       # trees of the right, then the left hilum
    hilum = np.array(thorax.hilum)
    ang = np.tile(base, 2) + rng.normal(0, 0.12, n0)
    length = H * rng.uniform(0.09, 0.13, n0) * np.where(ang > 0.3, 1.2, 0.9)
    px = np.repeat(hilum[:, 0], base.size) + rng.normal(0, 0.6, n0)
    py = np.repeat(hilum[:, 1], base.size) + rng.normal(0, 0.02 * H, n0)
    calibre = 0.75 * rng.uniform(0.8, 1.2, n0)
    xs, ys, ms, lv = [], [], [], []
    for level in range(levels):
        ca, sa = np.cos(ang), np.sin(ang)
        ex, ey = px + length * ca, py + length * sa
        n_pts = max(int(np.ceil(length.max() * px_per_cm / 0.8)), 2)
        t = np.linspace(0.0, 1.0, n_pts)[None, :]
        bend = rng.normal(0, 0.06, (ang.size, 1)) * length[:, None] * np.sin(np.pi * t)
        xs.append((sign[:, None]
                   * (px[:, None] + (ex - px)[:, None] * t - sa[:, None] * bend)).ravel())
        ys.append((py[:, None] + (ey - py)[:, None] * t + ca[:, None] * bend).ravel())
        ms.append(np.repeat(calibre * length * px_per_cm / n_pts, n_pts))
        lv.append(np.full(ang.size * n_pts, level))
        spread = thorax.subject.vessel_spread + rng.normal(0, 0.07, ang.size)
        ang = np.concatenate([ang - spread * rng.uniform(0.6, 1.1, ang.size),
                              ang + spread * rng.uniform(0.6, 1.1, ang.size)])
        px, py, sign = np.tile(ex, 2), np.tile(ey, 2), np.tile(sign, 2)
        length = np.tile(length, 2) * rng.uniform(0.68, 0.85, ang.size)
        calibre = np.tile(calibre, 2) * 0.64
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ms), np.concatenate(lv)


def splat(shape: tuple, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bilinear splat of weighted points (float pixel coordinates) into a float32 image."""
    h, w = shape
    r0 = np.floor(rows).astype(np.intp)
    c0 = np.floor(cols).astype(np.intp)
    fr, fc = rows - r0, cols - c0
    out = np.zeros(h * w, dtype=np.float64)
    for dr, dc, wt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                       (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        out += np.bincount(rr[ok] * w + cc[ok], weights=(weights * wt)[ok], minlength=h * w)
    return out.reshape(h, w).astype(np.float32)


def _add_in_box(target: np.ndarray, frame: PixelFrame, box_cm, weight: float, fn) -> None:
    """``target[box] += weight * fn(X[box], Y[box])`` on the pixels of a patient-space box."""
    box = frame.box(*box_cm)
    if box is not None:
        target[box] += np.float32(weight) * fn(frame.X[box], frame.Y[box])


#: Smooth fields :func:`render_anatomy` can return besides ``density``, ``mask`` and ``side``.
FIELDS = ("air", "lateralness", "height", "heart", "vessels")


def render_anatomy(thorax: Thorax, frame: PixelFrame, rng: np.random.Generator,
                   coarse: bool = False, fields: tuple = FIELDS,
                   over_heart: bool = False) -> dict:
    """All anatomy layers of one image.

    Parameters
    ----------
    thorax : posed geometry from :func:`build_thorax`.
    frame : the image's pixel grid in patient coordinates.
    rng : the image's random generator (rib jitter, vessel trees, gastric bubble).
    coarse : compute the attenuation and the smooth fields at half resolution and upsample
        them (about 3x faster; the detector blur of a 256 px image is about that wide anyway).
        The lung mask keeps a sharp full-resolution border.
    fields : which of :data:`FIELDS` to return (upsampling them costs time).
    over_heart : the lung mask convention (:data:`MASK_CONVENTIONS`).

    Returns
    -------
    dict of arrays of ``frame.shape``: ``density`` (float32 projected attenuation, about 0..1.4),
    ``mask`` and ``side`` of :func:`lung_fields`, and the requested ``fields``: those of
    :func:`lung_fields` and ``vessels`` (float32 vessel calibre map inside the lungs, cm).
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; choose from {FIELDS}")
    work = frame.coarsen() if coarse else frame
    s = thorax.subject
    H, W = thorax.height, s.half_width
    X, Y, ppc = work.X, work.Y, work.px_per_cm
    look = _lookup(thorax, X, Y)
    out = lung_fields(thorax, X, Y, look, over_heart=over_heart)
    lung_inside = out["inside"]
    body = _body(thorax, X, look, ppc) * np.float32(0.95 + 0.1 * (s.habitus - 1.0))
    air, heart = out["air"], out["heart"]
    density = body - np.float32(s.lung_air) * air * (1.0 - 0.85 * heart) + 0.05 * heart
    # gastric bubble under the left dome (with a fluid level when upright)
    gx, gy = 0.45 * thorax.width[1], thorax.dome_y[1] + 0.09 * H
    box = work.box(gx - 0.3 * H, gx + 0.3 * H, gy - 0.2 * H, gy + 0.2 * H)
    if box is not None:
        bx, by = X[box], Y[box]
        bubble = np.exp(-(((bx - gx) / (0.11 * H)) ** 2 + ((by - gy) / (0.06 * H)) ** 2) * 2.0)
        if not s.supine:
            bubble *= np.clip((gy + 0.02 * H - by) * ppc, 0.0, 1.0) * 0.7 + 0.3
        density[box] -= np.float32(rng.uniform(0.05, 0.22)) * bubble * body[box]
    hw = s.spine_half_width
    _add_in_box(density, work, (-1.6 * hw, 1.6 * hw, -0.6 * H, 1.6 * H), 0.07,
                lambda x, y: _spine(thorax, x, y, ppc))
    _add_in_box(density, work, (-6.0, 6.0, -0.6 * H, thorax.carina_y + 4.0), -0.1,
                lambda x, y: _trachea(thorax, x, y, ppc))
    ribs = _ribs(thorax, X, Y, look, ppc, rng)
    below = np.clip((Y - thorax.dome[look.side_u]) * np.float32(0.5), 0.0, 1.0)
    # ribs fade over the abdomen and are less visible outside the aerated lung
    visibility = (1.0 - 0.75 * below) * (0.45 + 0.55 * np.clip(air * 3.0, 0.0, 1.0))
    density += 0.14 * ribs * np.clip(body * 3.0, 0.0, 1.0) * visibility
    box = work.box(-1.4 * W, 1.4 * W, -0.35 * H, 0.4 * H)
    if box is not None:
        density[box] += (0.24 * _clavicles(thorax, X[box], Y[box], ppc)
                         * np.clip(body[box] * 4.0, 0.0, 1.0))
    for sign in (-1.0, 1.0):
        lo, hi = sorted((sign * 0.65 * W, sign * 1.4 * W))
        _add_in_box(density, work, (lo, hi, -0.12 * H, 0.62 * H), 0.09,
                    lambda x, y: _scapulae(thorax, x, y, ppc))
        lo, hi = sorted((sign * 1.0 * W, sign * 2.0 * W))
        _add_in_box(density, work, (lo, hi, -0.3 * H, 1.6 * H), 0.26,
                    lambda x, y: _humeri(thorax, x, y, ppc) * (np.abs(x) < 1.8 * W))
    if s.breast > 0:
        _add_in_box(density, work, (-1.4 * W, 1.4 * W, 0.4 * H, 1.35 * H), 0.16,
                    lambda x, y: _breasts(thorax, x, y))
    # hila and vessels
    for side, sign in ((0, -1.0), (1, 1.0)):
        hu, hy = thorax.hilum[side]
        box = work.box(sign * hu - 5.0, sign * hu + 5.0, hy - 8.0, hy + 8.0)
        if box is not None:
            hil = np.exp(-(((X[box] - sign * hu) / 1.6) ** 2 + ((Y[box] - hy) / 2.6) ** 2))
            density[box] += 0.12 * hil * (air[box] > 0)
    # vessels: projected calibre (cm) of the trees, drawn as blurred lines
    vx, vy, mass, _ = vessel_tree_points(thorax, rng, ppc)
    rows, cols = work.to_pixels(vx, vy)
    sigma = max(0.1 * ppc, 0.5)  # about the calibre of the middle generations
    vessels = ndi.gaussian_filter(splat(work.shape, rows, cols, mass), sigma, truncate=3.0)
    vessels *= np.float32(np.sqrt(2 * np.pi) * sigma)
    vessels = np.minimum(vessels, 1.2) * np.clip(air * 2.0, 0.0, 1.0) * (1.0 - 0.7 * heart)
    density += np.float32(0.14 * s.vessel_contrast) * vessels
    # parenchymal texture: fine mottling of the aerated lung
    aerated = np.clip(air * 2.0, 0.0, 1.0) * (1.0 - heart)
    density += np.float32(0.035) * smooth_noise(work.shape, 0.6 * ppc, rng) * aerated
    out.update(density=density, vessels=vessels)
    if coarse:
        # full resolution: smooth fields are upsampled; the mask is the zero level of an
        # upsampled inside-distance (cm), so that its border is sharp and follows the anatomy
        out = {k: upsample2(out[k], frame.shape) for k in ("density",) + tuple(fields)}
        mask = upsample2(lung_inside, frame.shape) > 0
    else:
        mask = out["mask"]
    mask = keep_two_lungs(mask, frame.X > 0)
    out["mask"] = mask
    out["side"] = np.where(mask, (frame.X > 0).astype(np.int8), np.int8(-1))
    return {k: out[k] for k in ("density", "mask", "side") + tuple(fields)}


def keep_two_lungs(mask: np.ndarray, left: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` on each side (bool (H, W)).

    Thin apices and costophrenic tips can leave specks of a pixel or two at small image sizes;
    true lung masks are two connected fields. ``left`` (bool) marks the patient's left side.
    """
    labels, n = ndi.label(mask)
    if n <= 2:
        return mask
    size = np.bincount(labels.ravel(), minlength=n + 1).astype(float)
    on_left = np.bincount(labels.ravel(), weights=left.ravel(), minlength=n + 1) > size / 2
    size[0] = 0
    keep = [int(np.argmax(np.where(on_left == side, size, 0))) for side in (False, True)]
    return np.isin(labels, [k for k in keep if k > 0])
