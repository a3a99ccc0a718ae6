"""cxrlib: the helper package of cxr-study.

One subpackage per stage of the data flow: ``data`` (in: importers, manifest, DICOM, QC, splits,
synthetic cohorts) -> ``preprocess`` (lung segmentation, views) -> ``models`` and ``train``
(fold trainings, the predictions table) -> ``analysis`` (metrics, bias, shortcuts, embeddings,
Grad-CAM) -> ``report`` (tables beside the papers, landing page, checklists). At the top:
``profiles`` (every setting that changes with scale), ``study`` / ``run_folder`` / ``runner``
(one run folder per run), ``artifacts`` (the files notebooks hand each other), ``gpu`` (how
trainings use a CUDA device) and ``paper_tables`` (the papers' published numbers). A stage
imports only from the stages before it (``models`` comes first) and from ``profiles``, ``paths``,
``gpu``, ``paper_tables``, ``run_folder`` and ``flow``; importing ``cxrlib`` itself loads nothing
heavy. The three largest stages are subpackages of one concern per module:
``preprocess.segmentation``, ``train.cit`` and ``analysis.explain``. Which notebook stands on
which modules:

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
                         trainings inline, in local processes or on SLURM), ``gpu``
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

``data.synthetic`` draws the embedded cohorts.
"""
__version__ = "0.1.0"
