"""From a view's frame to the original image's: a CAM is S x S pixels of the network input (the
view); the masks are H x W pixels of the original image. :func:`cam_to_box` resizes a CAM onto the
box of the image that the view shows, :func:`cam_to_image_frame` pastes it into the full image,
and :func:`row_box` reads that box from a row of :func:`cxrlib.analysis.explain.oof.oof_cams`'
table."""
from __future__ import annotations

import numpy as np

from cxrlib.preprocess.views import BOX_COLUMNS, Box, resize_image

__all__ = ["cam_to_box", "cam_to_image_frame", "row_box"]


def cam_to_box(cam: np.ndarray, box: Box) -> np.ndarray:
    """Resize a CAM (S, S) onto a box of the original image: float32 (row1 - row0, col1 - col0),
    bilinear (:func:`cxrlib.preprocess.views.resize_image`)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must be a 2-D array (S, S), got shape {cam.shape}")
    r0, r1, c0, c1 = (int(v) for v in box)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"empty box {box}")
    return np.clip(resize_image(cam, (r1 - r0, c1 - c0)), 0.0, None)


def cam_to_image_frame(cam: np.ndarray, box: Box, image_shape: tuple[int, int]) -> np.ndarray:
    """A view's CAM (S, S) in the original image's frame: float32 (H, W), the CAM resized onto
    ``box`` and 0 where the view does not reach (parts of the box outside the image are cut)."""
    h, w = (int(v) for v in image_shape)
    on_box = cam_to_box(cam, box)
    r0, r1, c0, c1 = (int(v) for v in box)
    out = np.zeros((h, w), dtype=np.float32)
    sr0, sr1, sc0, sc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if sr1 > sr0 and sc1 > sc0:
        out[sr0:sr1, sc0:sc1] = on_box[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0]
    return out


def row_box(rec) -> Box:
    """The box (:data:`cxrlib.preprocess.views.BOX_COLUMNS`) of a row of :func:`oof_cams`' table."""
    return tuple(int(rec[c]) for c in BOX_COLUMNS)
