"""ipywidgets browsers for interactive use in JupyterLab (notebooks show them when
``interactive=True``; batch runs skip them).

The drawing is a pure function (:func:`overlay_rgb`), so it is tested without a browser.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlib.data.images import overlay_rgb, png_bytes, read_image, read_mask


def image_browser(manifest: pd.DataFrame, data_root: str | Path, width: int = 420):
    """A browser of the cohort: choose class and source, step through images, overlay the masks.

    Returns an ``ipywidgets.VBox``; display it in a notebook.
    """
    import ipywidgets as W

    root = Path(data_root)
    classes = sorted(manifest["label"].unique())
    sources = ["(all)"] + sorted(manifest["source"].unique())
    cls = W.Dropdown(options=classes, description="class")
    src = W.Dropdown(options=sources, description="source")
    idx = W.IntSlider(min=0, max=0, description="image")
    show_mask = W.Checkbox(value=True, description="mask overlay")
    opacity = W.FloatSlider(value=0.35, min=0.0, max=1.0, step=0.05, description="opacity")
    view = W.Image(format="png", width=width)
    info = W.HTML()

    def selection() -> pd.DataFrame:
        sel = manifest[manifest["label"] == cls.value]
        if src.value != "(all)":
            sel = sel[sel["source"] == src.value]
        return sel

    def redraw(*_):
        sel = selection()
        idx.max = max(len(sel) - 1, 0)
        if sel.empty:
            info.value = "<i>no image of this class in this source</i>"
            view.value = b""
            return
        r = sel.iloc[min(idx.value, len(sel) - 1)]
        img = read_image(root / r["path"])
        lung = lesion = None
        if show_mask.value:
            if isinstance(r.get("lung_mask_path"), str):
                lung = read_mask(root / r["lung_mask_path"])
            if isinstance(r.get("lesion_mask_path"), str):
                lesion = read_mask(root / r["lesion_mask_path"])
        view.value = png_bytes(overlay_rgb(img, lung, lesion, opacity.value))
        fields = ["image_id", "source", "label", "severity", "sex", "age", "projection", "sensor"]
        info.value = " · ".join(f"<b>{f}</b> {r[f]}" for f in fields if pd.notna(r.get(f)))

    for w in (cls, src, idx, show_mask, opacity):
        w.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([cls, src]), W.HBox([idx, show_mask, opacity]), info, view])
