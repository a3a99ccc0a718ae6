"""Grad-CAM explanations of the trained classifiers, and how to score them against the truth.

Seed 001 (Fig. 1) and seed 000 (Figs. 5-7, "why positive / why negative") *showed* Grad-CAM maps;
seed 004 did the same for its transfer models. This package computes the maps with the ``grad-cam``
package on each model's named target layer (``model.cam_layer``, see
:mod:`cxrlib.models.classifiers`) and *scores* them:

======================= ==========================================================================
score                   meaning
======================= ==========================================================================
:func:`energy_share`    share of the CAM's total (non-negative) mass inside a mask, in [0, 1]
:func:`pointing_game`   1 when the CAM's maximum lies inside the mask, else 0 (Zhang et al. 2018)
:func:`road_scores`     ROAD faithfulness (Rong et al. 2022, ``pytorch_grad_cam.metrics.road``):
                        the drop in the target's probability when the *most* relevant pixels are
                        imputed away, minus the drop when the *least* relevant ones are, halved
======================= ==========================================================================

Frames ------ A CAM lives in the frame of the network input: the view (``exp1``, ``exp2``,
``exp3``, ``sdnet``, see :mod:`cxrlib.preprocess.views`), S x S pixels. The lung and lesion masks
live in the frame of the original image, H x W. :func:`cxrlib.preprocess.views.view_box` gives the
box of the original image that a view shows; notebook 01 writes it beside each view in
``views.csv`` and :func:`oof_cams` carries it to each map's row; :func:`cam_to_box` resizes a CAM
onto that box, at the original resolution, and :func:`cam_to_image_frame` pastes it into the full
image (zero where the view does not reach). Scores are computed on the box, with the masks cut by
:func:`cxrlib.preprocess.views.crop_to_box` (pixels of the box outside the image count as outside
every mask): the pixels of the image that the view does not show carry no CAM mass, so a share over
the box is the share over the image.

The out-of-fold rule: :func:`oof_cams` applies to each image only the checkpoint of the fold in
which it was a *test* image (``predictions.parquet``'s ``fold``; checkpoint
``checkpoints/<artifact_stem>.pth``), on the view that checkpoint was trained on (the checkpoint's
``extra['view']``).

Modules
-------
- ``gradcam``: :func:`to_input_tensor`, :func:`grad_cam` and :func:`road_scores` on arrays;
- ``frames``: from the view's frame to the image's (:func:`cam_to_box`,
  :func:`cam_to_image_frame`, :func:`row_box`);
- ``oof``: out-of-fold maps for a predictions table (:func:`load_fold_model`,
  :func:`stratified_image_ids`, :func:`oof_cams`);
- ``scores``: :func:`energy_share` and :func:`pointing_game` on plain arrays, :func:`score_cams`
  on out-of-fold maps, and the tables (:func:`summarize_localisation`,
  :func:`summarize_faithfulness`);
- ``twin``: outside-the-lungs mass compared between experiments and between a cohort with the
  shortcut planted and its clean twin (:func:`compare_outside_energy`, :func:`compare_cohorts`,
  :data:`SCORING_SETTINGS`, :func:`twin_mismatch`, :func:`claim_answer`,
  :func:`shortcut_comparison`);
- ``figures``: :func:`cam_overlay`, :func:`plot_cam_grid`, :func:`plot_cam_table`,
  :func:`confident_outcomes`, :func:`plot_why` and the viewer :func:`cam_viewer`.
"""
from .figures import (cam_overlay, cam_viewer, confident_outcomes, plot_cam_grid, plot_cam_table,
                      plot_why)
from .frames import cam_to_box, cam_to_image_frame, row_box
from .gradcam import grad_cam, road_scores, to_input_tensor
from .oof import load_fold_model, oof_cams, stratified_image_ids
from .scores import (energy_share, pointing_game, score_cams, summarize_faithfulness,
                     summarize_localisation)
from .twin import (SCORING_SETTINGS, claim_answer, compare_cohorts, compare_outside_energy,
                   shortcut_comparison, twin_mismatch)

__all__ = [
    "energy_share", "pointing_game", "to_input_tensor", "grad_cam", "road_scores",
    "cam_to_box", "cam_to_image_frame", "row_box", "load_fold_model", "stratified_image_ids",
    "oof_cams", "score_cams", "summarize_localisation", "summarize_faithfulness",
    "compare_outside_energy", "compare_cohorts", "SCORING_SETTINGS", "twin_mismatch",
    "claim_answer", "shortcut_comparison", "confident_outcomes", "cam_overlay",
    "plot_cam_grid", "plot_cam_table", "plot_why", "cam_viewer",
]
