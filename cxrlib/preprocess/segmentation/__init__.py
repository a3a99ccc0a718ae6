"""Lung segmentation: U-Net training (fastai), inference, post-processing, scores and the QC flag.

The method is seed 001's (details in the reference implementation):

- input: the grayscale radiograph resized to ``size x size``, histogram-equalised, standardised
  (zero mean, unit standard deviation, per image) - :func:`prepare_unet_input`;
- network: :class:`cxrlib.models.UNet`, trained with Adam on binary cross-entropy, batch 8,
  augmentation rotation +-10 degrees, shift +-10%, zoom +-20% (the same draw for image and mask).
  The ``paper`` profile keeps these settings; ``smoke`` and ``default`` add batch normalisation
  and a higher one-cycle learning rate so that their few CPU epochs converge (profile fields
  ``seg_batch_size``, ``seg_lr``, ``seg_batch_norm``);
- post-processing: threshold 0.5, removal of regions smaller than 2% of the image, hole filling,
  the two largest regions kept - :func:`postprocess_mask`;
- quality control: seed 003's rules (both lungs found, the lungs covering at least 30% of the
  image) plus anatomical shape checks (sizes, side by side, height, top and bottom edges, neck,
  shoulders), each a recorded reason, and a plausibility score - :func:`lung_qc`, implemented in
  :mod:`cxrlib.preprocess.lung_plausibility`.

Weights are read from a local file only (:func:`load_unet`); nothing is downloaded. A weights file
is written by :func:`save_unet` together with a JSON file of the training parameters.

Typical use (notebook 01)::

    fit = train_unet_on_manifest(manifest, run.artifact("unet_lung.pt"), profile=P, seed=seed)
    seg = segment_manifest(fit.model, manifest, run.artifact("lung_masks"), size=P.seg_size)
    scores = score_masks(manifest, run.artifact("lung_masks"))

Arrays: images are float32 (H, W) in [0, 1] (see :mod:`cxrlib.data.images`), masks bool (H, W).
fastai is imported only when training, so inference stays light.

Modules (every public name is re-exported here):

- :mod:`~cxrlib.preprocess.segmentation.data`: the network's input (:func:`prepare_unet_input`,
  :func:`normalise_unet_input`), the (image, mask) pairs of a manifest
  (:func:`load_segmentation_pairs`; which rows have a mask, :func:`has_lung_mask`,
  :func:`rows_with_masks`), the split by patient (:func:`split_by_patient`), the
  training dataset and its augmentation (:data:`AUGMENTATION`);
- :mod:`~cxrlib.preprocess.segmentation.training`: :func:`train_unet`,
  :func:`train_unet_on_manifest` and what it returns, :class:`SegmenterFit`,
  :func:`epochs_for_min_steps`;
- :mod:`~cxrlib.preprocess.segmentation.weights`: the weights file (:func:`save_unet`,
  :func:`read_unet_params`, :func:`load_unet`);
- :mod:`~cxrlib.preprocess.segmentation.inference`: probabilities, post-processing, masks and
  their QC (:func:`predict_lung_probability`, :func:`postprocess_mask`, :func:`segment_images`,
  :func:`lung_qc`, :func:`segment_manifest`; the CPU batch cap
  :data:`~cxrlib.preprocess.segmentation.inference.CPU_ACTIVATION_BYTES`);
- :mod:`~cxrlib.preprocess.segmentation.scores`: Dice and IoU (:func:`dice_score`,
  :func:`iou_score`, :func:`score_masks`, :func:`summarise_scores`, :func:`worst_cases`,
  :func:`reference_scores`) and notebook 01's tables (:func:`scores_table`, :func:`qc_summary`,
  :func:`qc_flag_reasons`);
- :mod:`~cxrlib.preprocess.segmentation.figures`: notebook 01's figures
  (:func:`training_curves_figure`, :func:`mask_cases_figure`).
"""
from .data import (
    AUGMENTATION, has_lung_mask, load_segmentation_pairs, normalise_unet_input,
    prepare_unet_input, rows_with_masks, split_by_patient,
)
from .figures import mask_cases_figure, training_curves_figure
from .inference import (
    lung_qc, postprocess_mask, predict_lung_probability, segment_images, segment_manifest,
)
from .scores import (
    dice_score, iou_score, qc_flag_reasons, qc_summary, reference_scores, score_masks,
    scores_table, summarise_scores, worst_cases,
)
from .training import SegmenterFit, epochs_for_min_steps, train_unet, train_unet_on_manifest
from .weights import load_unet, read_unet_params, save_unet

__all__ = [
    "AUGMENTATION", "prepare_unet_input", "normalise_unet_input", "load_segmentation_pairs",
    "split_by_patient", "has_lung_mask", "rows_with_masks",
    "train_unet", "train_unet_on_manifest", "SegmenterFit", "epochs_for_min_steps",
    "save_unet", "load_unet", "read_unet_params",
    "predict_lung_probability", "postprocess_mask", "segment_images", "lung_qc",
    "segment_manifest",
    "dice_score", "iou_score", "score_masks", "summarise_scores", "worst_cases",
    "reference_scores", "scores_table", "qc_summary", "qc_flag_reasons",
    "training_curves_figure", "mask_cases_figure",
]
