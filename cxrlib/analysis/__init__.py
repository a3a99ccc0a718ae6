"""What the trained models say: metrics with patient-bootstrap intervals (``metrics``), the
corpus audit (``audit``), bias by subgroup (``bias``), shortcut probes (``shortcuts``),
embeddings and t-SNE (``embedding``), Grad-CAM, its scores and the comparison of a planted
cohort with its shortcut-free twin (``explain/``)."""
