"""Training: the fastai loop and recipes (``training``), cross-validation of the classifiers
(``crossval``, with each profile's classifier setup), CiT/COVID-SDNet (``cit/``), the predictions
table every analysis reads (``predictions``), and fold trainings as units of work and where they
run (``units``, ``executors``). How a training uses a CUDA device is :mod:`cxrlib.gpu`."""
