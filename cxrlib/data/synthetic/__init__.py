"""Synthetic chest-radiograph cohorts with ground truth: the study's embedded data.

    from cxrlib.data.synthetic import generate_cohort
    df = generate_cohort("out", preset="arias", n_images=120, size=128, seed=0, shortcut=1.0)

writes ``out/images/*.png`` (8- or 16-bit, per source), ``out/masks/lung/*.png`` and
``out/masks/lesion/*.png`` (0/255) and ``out/manifest.csv`` (the project's schema plus ``synth_*``
ground truth). The same arguments give byte-identical files.

Public API
----------
- :func:`generate_cohort` (write a cohort), :func:`default_cohort` (the cached cohort of a
  profile), :func:`sample_cases` (per-image metadata only, fast), :func:`render_case` (one
  image and its masks as arrays);
- :func:`rale_score`, :func:`lung_parts`, :func:`severity_from_rale`: the RALE-like extent score
  computed from masks (how a lung is split and what "involved" means is documented in
  :mod:`cxrlib.data.synthetic.disease`);
- :data:`PRESETS`: ``arias`` (3 classes, 8 sources), ``covidgr`` (binary, one source) and
  ``lungseg`` (the lung U-Net's training cohort: every framing, children, more disease);
- :data:`COHORTS`: the cohorts a study run carries, each a preset and a shortcut knob
  (``arias``, its shortcut-free twin ``arias-noshortcut``, ``covidgr``); :func:`cohort_spec`,
  :func:`shortcut_twin`.

Manifest ground truth (``synth_*``)
-----------------------------------
``preset``, ``shortcut`` (the knob), ``style`` (whose acquisition profile the image wears),
``coupled`` (the patient drew its own source's profile), ``patient_index``, ``image_index``,
``visit``, ``supine``, ``bit_depth``, ``aspect``, ``height``, ``width``, ``px_per_cm``,
``marker`` and ``marker_corner``, ``text`` and ``text_corner``, ``collimation``, ``devices``,
``lobe`` and ``effusion`` (pneumonia), ``rale_target`` (what was asked), ``rale``,
``rale_right``, ``rale_left`` (scored on the written masks), ``lesion_fraction`` (lesion /
lung pixels) and ``lung_fraction`` (lung / image pixels). Corners and empty marks are "none".

Modules: ``anatomy`` (subject -> tissue maps and lung masks), ``disease`` (lesions, RALE-like
score), ``acquisition`` (framing, devices, sensor, display, burned-in marks, collimation),
``frame`` (pixel grid <-> patient centimetres), ``presets`` (the recipes, with the papers'
numbers), ``cohort`` (sampling, rendering, writing, the shortcut rule).
"""
from .cohort import default_cohort, generate_cohort, render_case, sample_cases
from .disease import lung_parts, rale_score, severity_from_rale
from .presets import COHORTS, PRESETS, cohort_spec, shortcut_twin

__all__ = ["COHORTS", "PRESETS", "cohort_spec", "default_cohort", "generate_cohort", "lung_parts",
           "rale_score", "render_case", "sample_cases", "severity_from_rale", "shortcut_twin"]
