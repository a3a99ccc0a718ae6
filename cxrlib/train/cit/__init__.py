"""Class-inherent transformations (FuCiTNet) and COVID-SDNet (seed 000): training and inference.

Seed 000 (Tabik et al. 2020, Sec. 4) turns each radiograph ``x`` into two images with two
generators learnt per class - ``G_N x`` (the "negative" transform, sign ``-``) and ``G_P x``
(the "positive" transform, sign ``+``) - and classifies both:

1. **CiT training** (FuCiTNet, Rey-Area et al. 2020): the generators and a classifier ``C``
   learn together. The images of class k go through ``G_k``; generator k minimises
   ``pixel MSE + 0.006 perceptual MSE + 2e-8 TV + lambda CE(C(G_k x), k)`` (:func:`generator_loss`)
   and ``C`` minimises the cross-entropy of all transformed images. Early stopping on a
   validation split drawn from the training folds (:func:`cxrlib.data.splits.fold_split`).
   **FuCiTNet alone** predicts the class k whose transform ``C`` finds most typical of k:
   ``argmax_k softmax(C(G_k x))_k`` (:func:`fucitnet_probabilities`).
2. **COVID-SDNet**: every training image gives ``G_P x`` and ``G_N x`` labelled P+/P- or N+/N-
   (:func:`sdnet_dataset`); a 4-class network (ResNet-50 -> GAP -> FC 512 ReLU -> FC 4 in the
   paper) learns them, and the two output vectors of a test image are fused by seed 000's rule
   (:func:`sdnet_fusion`).

Arrays: images float32 (N, S, S), intensities in [0, 1] (the generators' outputs are
unbounded but stay close); labels int class indices into ``classes`` (binary: 0 = negative
``control``, 1 = positive ``covid19``). Networks receive the gray image repeated on 3 channels
with the ImageNet mean/std (:func:`to_network_input`), as every classifier of the study.

:func:`run_cit_crossval` does both stages fold by fold with the split plan of notebook 00 and
writes the rows of models ``fucitnet`` and ``covid-sdnet`` into ``predictions.parquet``, with
the fold's checkpoint, history and split under ``cit/`` and a line in ``cit_runs.csv``; each
fold is a unit of work (:mod:`cxrlib.train.units`) that any executor may run.

Modules, in the order they build on each other (every public name is re-exported here):

- ``recipe``: :class:`CiTRecipe` and the named recipes :data:`CIT_RECIPES`.
- ``networks``: the networks around the generators: :func:`to_network_input`,
  :func:`perceptual_network` (the frozen VGG16) and :func:`scale_gradient`.
- ``losses``: the loss terms (:func:`pixel_mse`, :func:`perceptual_mse`,
  :func:`total_variation`, :func:`classifier_ce`) and :func:`generator_loss`.
- ``loop``: the joint training (:func:`cit_step`, :func:`train_cit` -> :class:`TrainedCiT`, a
  plain PyTorch loop with two optimisers) and inference (:func:`transform_images`,
  :func:`fucitnet_probabilities`).
- ``sdnet``: COVID-SDNet's four classes :data:`SDNET_CLASSES`, :func:`sdnet_dataset`, the
  fusion rule :func:`sdnet_fusion` and :func:`sdnet_probabilities`.
- ``crossval``: :class:`CiTSetup`, :func:`run_cit_crossval` and its units (:func:`cit_specs`,
  :func:`cit_fold`), :data:`CIT_MODELS`, and reading back (:func:`read_cit_runs` from
  :data:`CIT_RUNS_FILE`, :func:`read_cit_history`, :func:`load_cit`).
- ``figures``: :func:`plot_transforms` (seed 000's Fig. 4) and :func:`plot_cit_history`.
"""
from cxrlib.train.cit.crossval import (
    CIT_MODELS, CIT_RUNS_FILE, RUNS_KEY, CiTSetup, cit_fold, cit_specs, load_cit, read_cit_history,
    read_cit_runs, run_cit_crossval,
)
from cxrlib.train.cit.figures import plot_cit_history, plot_transforms
from cxrlib.train.cit.losses import (
    classifier_ce, generator_loss, perceptual_mse, pixel_mse, total_variation,
)
from cxrlib.train.cit.loop import (
    TrainedCiT, cit_step, fucitnet_probabilities, train_cit, transform_images,
)
from cxrlib.train.cit.networks import perceptual_network, scale_gradient, to_network_input
from cxrlib.train.cit.recipe import CIT_RECIPES, CiTRecipe
from cxrlib.train.cit.sdnet import (
    SDNET_CLASSES, sdnet_dataset, sdnet_fusion, sdnet_probabilities,
)

__all__ = [
    "CIT_MODELS", "SDNET_CLASSES", "CiTRecipe", "CIT_RECIPES", "pixel_mse", "perceptual_mse",
    "total_variation", "classifier_ce", "generator_loss", "perceptual_network", "to_network_input",
    "scale_gradient", "cit_step", "TrainedCiT", "train_cit", "transform_images",
    "fucitnet_probabilities", "sdnet_dataset", "sdnet_fusion", "sdnet_probabilities",
    "CiTSetup", "run_cit_crossval", "cit_specs", "cit_fold", "load_cit", "read_cit_runs",
    "read_cit_history", "plot_transforms", "plot_cit_history", "CIT_RUNS_FILE", "RUNS_KEY",
]
