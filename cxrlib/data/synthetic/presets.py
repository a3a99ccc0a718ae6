"""The cohort presets as data: ``arias`` and ``covidgr`` (the papers' cohorts) and ``lungseg``
(the training cohort of the lung U-Net for corpora without lung masks).

Numbers copied from the source papers (users do not have the project's paper tables, so the
values needed are repeated here, each with the table it comes from):

- ``arias``: Arias-Londoño et al. 2020 (arXiv 2011.14259), Table II (images per class) and
  Table III (per-source demographics, projection, sensor and which classes each source gives).
- ``covidgr``: Tabik et al. 2020 (arXiv 2006.01409), Table 3 (COVIDGR-1.0 composition: 426
  negatives, 426 positives of which 76/100/171/79 Normal-PCR+/mild/moderate/severe; women/men).
- ``lungseg``: no paper's cohort. ``arias``'s sources framed every way a hospital frames a chest
  film (tight to the lungs, or with the neck, shoulders and upper abdomen), plus young children's
  AP films (:data:`PAEDIATRIC`), with more and denser disease than ``arias``: what a segmenter
  meets in real corpora.

Values the papers leave blank are filled with stated assumptions (``# assumed`` comments). The
per-source *acquisition styles* (tone curve, framing, burned-in marker and text, collimation,
bit depth) are invented: they only need to differ between sources the way real corpora do, so
that a classifier can learn the source from the image when the cohort plants that shortcut.

Source sizes differ by 400x in the paper. A cohort of ``n`` images is split as follows
(see :func:`cxrlib.data.synthetic.cohort.sample_cases`): class counts follow the class shares (largest
remainder); within a class, every source that provides the class first gets a floor of
``min(SOURCE_FLOOR, n_class // n_sources)`` images and the rest is shared in proportion to
``sqrt(images of the source in Table III)`` (largest remainder), so that small sources such as
Montgomery (138 images) still appear at small ``n``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Smallest number of images of one (source, class) cell, when the class is large enough.
SOURCE_FLOOR = 3


@dataclass(frozen=True)
class Style:
    """How one source's images look, apart from the patient and the disease.

    Ranges are (low, high) of a uniform draw per image. Lengths are in centimetres of the
    patient plane, so that a style looks the same at every image size.
    """

    aspect: tuple            # image height / width
    margin_side: tuple       # field half-width / rib-cage half-width
    margin_top: tuple        # field above the lung apex, fraction of the lung height
    margin_bottom: tuple     # field below the costophrenic angles, fraction of the lung height
    tight_crop: float        # probability of a tight crop instead (lungs fill the image)
    black: tuple             # display window: density mapped to black (air 0, lungs ~0.4)
    white: tuple             # display window: percentile of the image's density mapped to white
    compress: tuple          # dynamic-range compression (share of large-scale contrast removed)
    compress_cm: float       # its kernel size, cm
    unsharp: tuple           # edge-enhancement amount
    unsharp_cm: float        # edge-enhancement kernel size, cm
    contrast: tuple          # slope of the sigmoid tone curve
    gamma: tuple             # power applied after the tone curve (>1 darker)
    equalize: tuple          # share of histogram equalisation mixed in
    output_low: tuple        # grey level of black
    output_high: tuple       # grey level of white
    noise: float             # noise level relative to the sensor's
    bit16: float             # probability of a 16-bit PNG
    marker: str              # laterality letter burned in ("L", "R") or "" for none
    marker_corner: str       # "tl", "tr", "bl" or "br"
    marker_prob: float
    marker_boxed: bool
    text: tuple              # burned-in text lines (may use {proj})
    text_corner: str
    text_prob: float
    collimation: str         # "white" (unexposed), "black" (shuttered) or "none"
    collimation_prob: float
    collimation_cm: tuple    # border width range, cm


@dataclass(frozen=True)
class Source:
    """One source dataset: its label mix, demographics, acquisition mix and style."""

    name: str
    images: int              # images in the paper's corpus (sets the tempered share)
    labels: tuple            # classes this source provides
    age_mean: float
    age_sd: float
    male_fraction: float     # share of men (images)
    ap_fraction: float       # share of AP projections
    dx_fraction: float       # share of DX (vs CR) sensors
    images_per_patient: float  # mean images per patient
    years: tuple             # study-date range (first year, last year)
    style: Style
    male_fraction_by_label: dict = field(default_factory=dict)  # overrides male_fraction
    min_age: float = 18.0    # youngest patient (years): the papers' sources are adults


@dataclass(frozen=True)
class Preset:
    """A cohort recipe: classes, their shares, sources and COVID-19 severity mix."""

    name: str
    labels: tuple
    class_shares: dict       # label -> share of the cohort
    sources: tuple           # of Source
    severity_shares: dict    # severity -> share among covid19 images
    description: str
    mask_over_heart: bool = False  # lung masks include the lung over the heart
    # (:data:`cxrlib.data.synthetic.anatomy.MASK_CONVENTIONS`)

    def source(self, name: str) -> Source:
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(f"preset {self.name!r} has no source {name!r}; it has "
                       f"{[s.name for s in self.sources]}")


def _style(**kw) -> Style:
    base = dict(
        aspect=(0.95, 1.1), margin_side=(0.98, 1.2), margin_top=(0.0, 0.13),
        margin_bottom=(0.0, 0.12),
        tight_crop=0.15,
        black=(-0.1, 0.15), white=(99.0, 99.8), compress=(0.2, 0.55), compress_cm=8.0,
        unsharp=(0.05, 0.20), unsharp_cm=1.0, contrast=(1.0, 2.0), gamma=(0.9, 1.1),
        equalize=(0.0, 0.2), output_low=(0.0, 0.06), output_high=(0.82, 0.97), noise=1.0, bit16=0.0,
        marker="L", marker_corner="tr", marker_prob=0.7, marker_boxed=False, text=(),
        text_corner="tl", text_prob=0.0, collimation="none", collimation_prob=0.0,
        collimation_cm=(0.5, 2.0),
    )
    base.update(kw)
    return Style(**base)


# Table III of Arias-Londoño et al. 2020: mean age, std, males, females, images, AP, PA, DX, CR
# and the has_covid19/has_pneumonia/has_control flags. Shares below are males/(males+females),
# AP/(AP+PA) and DX/(DX+CR) of that table.
ARIAS_SOURCES = (
    Source(
        "HM Hospitales", images=5560, labels=("covid19",),
        age_mean=67.8, age_sd=15.7, male_fraction=3703 / 5560, ap_fraction=5018 / 5560,
        dx_fraction=1264 / 5560, images_per_patient=2.4,  # text of the paper: 2.4 studies/subject
        years=(2020, 2020),
        style=_style(aspect=(0.9, 1.15), margin_side=(1.04, 1.18), black=(-0.15, 0.05),
                     contrast=(1.5, 2.5), gamma=(0.85, 1.0), unsharp=(0.25, 0.45), bit16=0.9,
                     marker="L", marker_corner="tr", marker_prob=0.8, text=("{proj} PORTATIL",),
                     text_corner="tl", text_prob=0.8, collimation="white", collimation_prob=0.45),
    ),
    Source(
        "BIMCV", images=3013, labels=("covid19",),
        age_mean=62.4, age_sd=16.7, male_fraction=1527 / 3013, ap_fraction=1171 / 2388,
        dx_fraction=1145 / 3013, images_per_patient=1.9, years=(2020, 2020),
        style=_style(aspect=(0.95, 1.2), margin_side=(1.06, 1.22), equalize=(0.3, 0.6),
                     contrast=(2.0, 3.5), unsharp=(0.15, 0.30), bit16=0.85, marker="R",
                     marker_corner="tl", marker_boxed=True, marker_prob=0.75,
                     collimation="black", collimation_prob=0.35, collimation_cm=(1.0, 3.0)),
    ),
    Source(
        "ACT", images=188, labels=("covid19", "control"),
        age_mean=58.0, age_sd=17.0,  # assumed: Table III gives no demographics for ACT
        male_fraction=0.55,  # assumed
        ap_fraction=30 / 185, dx_fraction=126 / 185, images_per_patient=1.1, years=(2020, 2020),
        style=_style(aspect=(0.8, 0.95), margin_side=(0.98, 1.08), margin_top=(0.03, 0.12),
                     margin_bottom=(0.0, 0.1), gamma=(1.1, 1.35), contrast=(2.5, 4.0),
                     marker="L", marker_corner="tr", marker_prob=0.5, text=("ACT {proj}",),
                     text_corner="bl", text_prob=0.7, collimation="black", collimation_prob=0.55,
                     collimation_cm=(0.5, 1.5)),
    ),
    Source(
        "ChinaSet", images=662, labels=("pneumonia", "control"),
        age_mean=35.4, age_sd=14.8, male_fraction=449 / 662, ap_fraction=0.0, dx_fraction=1.0,
        images_per_patient=1.0, years=(2012, 2013),
        style=_style(aspect=(0.95, 1.05), margin_side=(1.1, 1.25), margin_bottom=(0.1, 0.3),
                     gamma=(0.75, 0.9), contrast=(1.5, 2.5), unsharp=(0.05, 0.15), marker="R",
                     marker_corner="tl", marker_prob=0.3, collimation="black",
                     collimation_prob=0.6, collimation_cm=(1.5, 3.5)),
    ),
    Source(
        "Montgomery", images=138, labels=("pneumonia", "control"),
        age_mean=51.9, age_sd=2.41,  # sd as printed in Table III
        male_fraction=63 / 137, ap_fraction=0.0, dx_fraction=0.0, images_per_patient=1.0,
        years=(2008, 2012),
        style=_style(aspect=(1.05, 1.2), margin_side=(1.12, 1.3), margin_bottom=(0.15, 0.35),
                     contrast=(1.0, 2.0), gamma=(1.0, 1.2), unsharp=(0.00, 0.10), marker="R",
                     marker_corner="tl", marker_prob=0.8, marker_boxed=True,
                     collimation="white", collimation_prob=0.7, collimation_cm=(1.0, 2.5)),
    ),
    Source(
        "CRX8", images=61790, labels=("pneumonia", "control"),
        age_mean=45.75, age_sd=16.83, male_fraction=34760 / 61790, ap_fraction=21860 / 61790,
        dx_fraction=1.0, images_per_patient=1.5,  # assumed: follow-up studies exist in CRX8
        years=(1992, 2015),
        style=_style(aspect=(1.0, 1.0), margin_side=(1.08, 1.25), black=(0.0, 0.2),
                     contrast=(2.0, 3.0), gamma=(0.95, 1.1), unsharp=(0.15, 0.25), marker="R",
                     marker_corner="tl", marker_prob=0.5),
    ),
    Source(
        "CheXpert", images=4623, labels=("pneumonia",),
        age_mean=62.38, age_sd=18.62, male_fraction=2697 / 4623, ap_fraction=3432 / 4623,
        dx_fraction=0.5,  # assumed: Table III gives no sensor for CheXpert
        images_per_patient=1.4, years=(2002, 2017),
        style=_style(aspect=(0.78, 0.9), margin_side=(1.0, 1.12), margin_top=(0.04, 0.15),
                     margin_bottom=(0.05, 0.2), gamma=(0.8, 0.95), unsharp=(0.30, 0.50),
                     marker="L", marker_corner="tl", marker_prob=0.6, marker_boxed=True,
                     text=("{proj} PORTABLE", "UPRIGHT"), text_corner="tr", text_prob=0.75),
    ),
    Source(
        "MIMIC", images=16399, labels=("pneumonia",),
        # the paper assumes MIMIC's demographics equal CheXpert's (no sex/age released)
        age_mean=62.38, age_sd=18.62, male_fraction=2697 / 4623, ap_fraction=10850 / 16399,
        dx_fraction=0.5,  # assumed
        images_per_patient=1.5, years=(2011, 2016),
        style=_style(aspect=(1.0, 1.2), margin_side=(1.05, 1.2), margin_bottom=(0.05, 0.2),
                     contrast=(2.5, 4.0), gamma=(1.0, 1.15), unsharp=(0.20, 0.35),
                     equalize=(0.1, 0.3), marker="L", marker_corner="tr", marker_prob=0.7,
                     text=("PORTABLE {proj}", "SEMI-UPRIGHT"), text_corner="tl", text_prob=0.8,
                     collimation="white", collimation_prob=0.25),
    ),
)

ARIAS = Preset(
    name="arias",
    labels=("control", "pneumonia", "covid19"),
    # Table II of Arias-Londoño et al. 2020, training + testing: 49983 / 24114 / 8573 images
    class_shares={"control": 49983 / 82670, "pneumonia": 24114 / 82670, "covid19": 8573 / 82670},
    sources=ARIAS_SOURCES,
    # no severity in the paper: the COVIDGR mix of Tabik et al. Table 3 is reused
    severity_shares={"normal_pcr_pos": 76 / 426, "mild": 100 / 426, "moderate": 171 / 426,
                     "severe": 79 / 426},
    description="3 classes from 8 sources, as compiled by Arias-Londoño et al. 2020",
)

COVIDGR = Preset(
    name="covidgr",
    labels=("control", "covid19"),
    # Table 3 of Tabik et al. 2020: 426 negatives and 426 positives
    class_shares={"control": 0.5, "covid19": 0.5},
    sources=(
        Source(
            "COVIDGR", images=852, labels=("control", "covid19"),
            age_mean=62.0, age_sd=16.0,  # assumed: Table 3 gives no ages
            male_fraction=423 / 852,
            # Table 3: negatives 239 women / 187 men, positives 190 women / 236 men
            male_fraction_by_label={"control": 187 / 426, "covid19": 236 / 426},
            ap_fraction=0.0, dx_fraction=1.0,  # PA only, one device (paper, section 3)
            images_per_patient=1.0, years=(2020, 2020),
            style=_style(aspect=(1.0, 1.15), margin_side=(1.04, 1.2), contrast=(2.0, 3.0),
                         gamma=(0.95, 1.05), unsharp=(0.15, 0.25), marker="L", marker_corner="tr",
                         marker_prob=0.6),
        ),
    ),
    severity_shares={"normal_pcr_pos": 76 / 426, "mild": 100 / 426, "moderate": 171 / 426,
                     "severe": 79 / 426},
    description="binary COVIDGR-1.0-like cohort: one hospital, PA only, balanced",
)


#: Young children's AP films, as in the paediatric pneumonia sets that COVID-19 corpora borrow
#: their controls and pneumonias from (Kermany et al. 2018, Guangzhou: 5,856 images of children
#: aged 1-5). Not in any paper's cohort; part of the lung U-Net's training cohort only.
PAEDIATRIC = Source(
    "Paediatric", images=5856, labels=("pneumonia", "control"),
    age_mean=3.0, age_sd=1.5, male_fraction=0.55, ap_fraction=1.0, dx_fraction=1.0,  # assumed
    images_per_patient=1.0, years=(2016, 2017), min_age=1.0,
    style=_style(aspect=(0.7, 1.0), margin_side=(1.05, 1.5), margin_top=(0.05, 0.45),
                 margin_bottom=(0.1, 0.6), contrast=(1.5, 3.0), gamma=(0.9, 1.1),
                 unsharp=(0.1, 0.3), marker="R", marker_corner="tl", marker_prob=0.5),
)


def _every_framing(src: Source) -> Source:
    """``src`` framed as any hospital may frame a chest film: from tight around the lungs to
    the neck, shoulders and upper abdomen in the field."""
    return replace(src, style=replace(src.style, margin_side=(0.95, 1.5), margin_top=(0.0, 0.35),
                                      margin_bottom=(-0.03, 0.45), tight_crop=0.2))


LUNGSEG = Preset(
    name="lungseg",
    labels=("control", "pneumonia", "covid19"),
    # not a paper's cohort: the training set of the lung U-Net for corpora without lung masks
    # (:mod:`cxrlib.preprocess.synthetic_unet`). Real corpora of COVID-19 studies are mostly
    # diseased, and radiologists' masks keep a white (consolidated or effused) lung as lung, so
    # disease and the denser severities are over-represented here against ``arias``.
    class_shares={"control": 0.3, "pneumonia": 0.35, "covid19": 0.35},
    sources=tuple(_every_framing(src) for src in ARIAS_SOURCES) + (PAEDIATRIC,),
    severity_shares={"normal_pcr_pos": 0.1, "mild": 0.2, "moderate": 0.35, "severe": 0.35},
    description="arias's sources with every framing and more, denser disease: the training "
                "cohort of the synthetic lung U-Net",
    mask_over_heart=True,
)

#: The presets by name.
PRESETS: dict[str, Preset] = {"arias": ARIAS, "covidgr": COVIDGR, "lungseg": LUNGSEG}


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (a :class:`Preset` is returned unchanged)."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


#: The synthetic cohorts a study run carries, in the order they run: name -> (preset, shortcut
#: knob). ``arias-noshortcut`` is ``arias`` generated with the shortcut removed (knob 0: a
#: patient's acquisition style, devices and projection no longer depend on its source or label),
#: at the same size and seed: the control on which a finding about shortcuts must disappear
#: (issue 8: is exp1's Grad-CAM mass outside the lungs higher than exp3's only when planted?).
#: It runs before ``arias`` so that ``arias``'s notebooks can read its results.
COHORTS: dict[str, tuple[str, float]] = {
    "arias-noshortcut": ("arias", 0.0),
    "arias": ("arias", 1.0),
    "covidgr": ("covidgr", 1.0),
}


def cohort_spec(name: str) -> tuple[str, float]:
    """``(preset, shortcut knob)`` of the synthetic cohort called ``name`` (see :data:`COHORTS`)."""
    try:
        return COHORTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown synthetic cohort {name!r}; "
                         f"choose from {list(COHORTS)}") from None


def shortcut_twin(name: str) -> str | None:
    """The cohort of :data:`COHORTS` with ``name``'s preset and the other shortcut knob
    (``arias`` <-> ``arias-noshortcut``), or None when there is none (``covidgr``)."""
    preset, knob = cohort_spec(name)
    twins = [other for other, (p, k) in COHORTS.items() if p == preset and k != knob]
    return twins[0] if len(twins) == 1 else None
