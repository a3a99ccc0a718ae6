"""Between images and models: lung segmentation (``segmentation/``: U-Net data, training,
weights, inference, scores and figures; ``domain_randomisation``, ``segmentation_adaptation``,
``lung_plausibility``, ``synthetic_unet``) and the views of seed 001 and seed 000 (``views``: crop
boxes, resizing, masks)."""
