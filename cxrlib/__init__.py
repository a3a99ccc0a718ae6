"""cxrlib: the helper package of cxr-study.

One module per stage of the data flow; the notebooks call them, and importing ``cxrlib`` itself
loads nothing heavy. Which notebook stands on which modules:

======================== ===================================================================
notebook                 modules
======================== ===================================================================
00_data_audit            ``corpus`` (``importers/``, ``manifest``, ``dicom``, ``qc``,
                         ``pseudonym``), ``audit``, ``splits``, ``widgets``
01_lung_segmentation     ``segmentation`` (``models.unet``, ``domain_randomisation``,
                         ``lung_plausibility``), ``synthetic_unet``,
                         ``segmentation_adaptation``, ``views``
02_cit_training          ``cit`` (``models.cit``), ``cv_report``, ``metrics``, ``predictions``
03_classifier_cv         ``crossval`` (``training``, ``models.classifiers``,
                         ``models.covidnet``), ``units`` and ``executors`` (fold trainings
                         inline, in local processes or on SLURM), ``gpu`` (mixed precision,
                         loader workers... on a CUDA device, for every training),
                         ``cv_report``, ``metrics``, ``predictions``
04_bias_analysis         ``bias``, ``shortcuts``, ``cv_report``
05_tsne                  ``embedding``
06_gradcam               ``explain``
every notebook           ``study`` (``profiles``, ``run_folder``, ``paths``), ``flow``
``python -m cxrlib run`` ``runner`` (``parameters``, ``provenance``, ``landing``,
                         ``checklist``, ``model_cards``); ``compare`` compares two runs
======================== ===================================================================

``synthetic`` draws the embedded cohorts; ``paper_tables`` holds the papers' published numbers.
"""
__version__ = "0.1.0"
