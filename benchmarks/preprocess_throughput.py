"""Preprocessing throughput: segment + crop + equalise, images per second per CPU core.

For each image: U-Net input preparation (resize, equalise, standardise), U-Net inference at
``--seg-size`` (batches of 16), post-processing at the image's resolution, and the four views
(exp1, exp2, exp3, sdnet) at ``--view-size``. Torch runs on one thread, so the figure is per core;
it is computed from the process's CPU time (what one core delivers, robust to other jobs sharing
the machine), with the wall-clock figure beside it. Target: >= 50 images/s per core for 256-pixel
images.

Images are hand-made radiographs (a bright body with two dark lungs and noise) of
``--image-size`` pixels, or the PNGs of ``--images DIR``. With a randomly initialised U-Net
(no ``--weights``) the predicted masks are meaningless, so the crops use a hand-made two-lung
mask of the image's size; every step is still timed on the real array sizes.

    python benchmarks/preprocess_throughput.py                    # default profile's U-Net
    python benchmarks/preprocess_throughput.py --seg-size 256 --width 1.0  # the paper's U-Net
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cxrlib.data.images import read_image
from cxrlib.models import UNet
from cxrlib.profiles import get_profile
from cxrlib.preprocess.segmentation import (
    load_unet, postprocess_mask, predict_lung_probability, prepare_unet_input,
)
from cxrlib.preprocess.views import VIEWS, make_view, resize_image


def two_lungs(shape: tuple[int, int], dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Two elliptic 'lungs' covering ~28% of an image of ``shape``: bool array."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    yy, xx = yy / shape[0], xx / shape[1]
    mask = np.zeros(shape, dtype=bool)
    for cx in (0.3, 0.7):
        mask |= ((xx - cx - dx) / 0.14) ** 2 + ((yy - 0.5 - dy) / 0.32) ** 2 < 1
    return mask


def hand_made_images(n: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` float32 (size, size) radiographs and their bool lung masks."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        mask = two_lungs((size, size), *rng.normal(0, 0.02, 2))
        image = np.clip(0.75 - 0.4 * mask + rng.normal(0, 0.05, mask.shape), 0, 1)
        images.append(image.astype(np.float32))
        masks.append(mask)
    return images, masks


def main(argv=None) -> None:
    default = get_profile("default")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256, help="side of the hand-made images")
    parser.add_argument("--seg-size", type=int, default=default.seg_size, help="U-Net input side")
    parser.add_argument("--width", type=float, default=default.width, help="U-Net width")
    parser.add_argument("--view-size", type=int, default=default.image_size, help="view side")
    parser.add_argument("--n", type=int, default=96, help="images to process")
    parser.add_argument("--images", type=Path, help="folder of PNG radiographs to use instead")
    parser.add_argument("--weights", type=Path, help="trained U-Net (else random weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = per core)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.images:
        files = sorted(args.images.glob("*.png"))[: args.n]
        images, masks = [read_image(f) for f in files], None
    else:
        images, masks = hand_made_images(args.n, args.image_size)
    model = load_unet(args.weights) if args.weights else UNet(width=args.width).eval()
    batch = 16

    # warm-up (allocations, one-off kernel selection)
    predict_lung_probability(model, np.stack([prepare_unet_input(images[0], args.seg_size)] * 2))

    timings = dict.fromkeys(["prepare", "unet", "postprocess", "views"], 0.0)
    start, cpu_start = time.perf_counter(), time.process_time()
    for b in range(0, len(images), batch):
        chunk = images[b:b + batch]
        t = time.perf_counter()
        prepared = np.stack([prepare_unet_input(im, args.seg_size) for im in chunk])
        timings["prepare"] += time.perf_counter() - t
        t = time.perf_counter()
        probs = predict_lung_probability(model, prepared, batch_size=batch, device="cpu")
        timings["unet"] += time.perf_counter() - t
        for k, (image, prob) in enumerate(zip(chunk, probs)):
            t = time.perf_counter()
            mask = postprocess_mask(resize_image(prob, image.shape))
            timings["postprocess"] += time.perf_counter() - t
            if args.weights is None:  # random weights: crop with a plausible mask
                mask = masks[b + k] if masks is not None else two_lungs(image.shape)
            t = time.perf_counter()
            if not mask.any():
                raise SystemExit("the U-Net found no lung in an image: are the weights trained?")
            for view in VIEWS:
                make_view(view, image, mask, size=args.view_size)
            timings["views"] += time.perf_counter() - t
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    n = len(images)
    shape = images[0].shape
    print(f"images: {n} of {shape[0]}x{shape[1]} px; U-Net width {model.width} at "
          f"{args.seg_size} px; views {','.join(VIEWS)} at {args.view_size} px; "
          f"torch threads {args.threads}")
    for step, seconds in timings.items():
        print(f"  {step:<12s} {1000 * seconds / n:7.2f} ms/image")
    print(f"throughput: {n / cpu:.1f} images/s per core (CPU time; {n / total:.1f} wall-clock) "
          f"(target >= 50)")


if __name__ == "__main__":
    main()
