"""What the trained models say: metrics with patient-bootstrap intervals (``metrics``), the
corpus audit (``audit``), bias by subgroup (``bias``), shortcut probes (``shortcuts``),
embeddings and t-SNE (``embedding``), Grad-CAM and its scores (``explain``)."""
