"""cxrlib: the helper package of cxr-study.

One subpackage per stage of the data flow: ``data`` (in: importers, manifest, DICOM, QC, splits,
synthetic cohorts) -> ``preprocess`` (lung segmentation, views) -> ``models`` and ``train``
(fold trainings, the predictions table) -> ``analysis`` (metrics, bias, shortcuts, embeddings,
Grad-CAM) -> ``report`` (tables beside the papers, landing page, checklists). At the top:
``profiles`` (every setting that changes with scale), ``study`` / ``run_folder`` / ``runner``
(one run folder per run) and ``artifacts`` (the files notebooks hand each other). A module
imports only from its own stage and the stages before it, and importing ``cxrlib`` itself loads
nothing heavy. Which notebook stands on which modules:

======================== ===================================================================
notebook                 modules
======================== ===================================================================
00_data_audit            ``data.corpus`` (``data.importers``, ``data.manifest``,
                         ``data.dicom``, ``data.qc``, ``data.pseudonym``), ``analysis.audit``,
                         ``data.splits``, ``report.widgets``
01_lung_segmentation     ``preprocess.segmentation`` (``models.unet``,
                         ``preprocess.domain_randomisation``,
                         ``preprocess.lung_plausibility``), ``preprocess.synthetic_unet``,
                         ``preprocess.segmentation_adaptation``, ``preprocess.views``
02_cit_training          ``train.cit`` (``models.cit``), ``report.cv_report``,
                         ``analysis.metrics``, ``train.predictions``
03_classifier_cv         ``train.crossval`` (``train.training``, ``models.classifiers``,
                         ``models.covidnet``), ``train.units`` and ``train.executors`` (fold
                         trainings inline, in local processes or on SLURM), ``train.gpu``
                         (mixed precision, loader workers... on a CUDA device),
                         ``report.cv_report``, ``analysis.metrics``, ``train.predictions``
04_bias_analysis         ``analysis.bias``, ``analysis.shortcuts``, ``train.crossval``
05_tsne                  ``analysis.embedding``
06_gradcam               ``analysis.explain``
every notebook           ``study`` (``profiles``, ``run_folder``, ``paths``), ``artifacts``,
                         ``flow``
``python -m cxrlib run`` ``runner`` (``parameters``, ``report.provenance``,
                         ``report.landing``, ``report.checklist``, ``report.model_cards``);
                         ``report.compare`` compares two runs
======================== ===================================================================

``data.synthetic`` draws the embedded cohorts; ``report.paper_tables`` holds the papers'
published numbers.
"""
__version__ = "0.1.0"
