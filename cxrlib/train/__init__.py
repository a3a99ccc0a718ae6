"""Training: the fastai loop and recipes (``training``), cross-validation of the classifiers
(``crossval``), CiT/COVID-SDNet (``cit``), the predictions table every analysis reads
(``predictions``), fold trainings as units of work and where they run (``units``,
``executors``), and the GPU settings (``gpu``)."""
