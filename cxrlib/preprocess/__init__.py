"""Between images and models: lung segmentation (``segmentation``: U-Net training, inference and
QC; ``domain_randomisation``, ``segmentation_adaptation``, ``lung_plausibility``,
``synthetic_unet``) and the three views of seed 001 (``views``: crop boxes, resizing, masks)."""
