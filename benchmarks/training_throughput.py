"""Training-step throughput: the fastai path of cxrlib.train.training against a bare PyTorch loop.

Both paths train the same network (two copies of one initialisation) on the same dataset
(:class:`cxrlib.train.training.ClassifierDataset`), batch size, optimiser (PyTorch-style Adam) and
class-weighted cross-entropy; the fastai path is a ``Learner`` built as
:func:`cxrlib.train.training.train_classifier` builds it. Only the training phase is timed (fastai:
``before_train`` to ``after_train``; bare: the loop over the batches); each path runs one warm-up
step first, and the two alternate ``--rounds`` times so that a busy machine hurts both alike.
The median images/second of each path and their ratio are printed (target: fastai / bare >= 0.90).

It then estimates the time of one cross-validation fold at a profile: training epochs on the
fold's training split, one validation pass per epoch and the prediction/embedding pass over every
image of the fold, from the measured training and inference throughput.

    .venv/bin/python benchmarks/training_throughput.py                  # default profile
    .venv/bin/python benchmarks/training_throughput.py --profile smoke --steps 4
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from functools import partial

import numpy as np
import torch

from cxrlib.models.classifiers import build_classifier
from cxrlib.profiles import get_profile
from cxrlib.train.training import ClassifierDataset, balanced_class_weights, predict


def bare_pytorch_epoch(model, dataset, batch_size, weight, lr, seed) -> float:
    """Seconds of one pass of a plain PyTorch training loop (after one warm-up step)."""
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         drop_last=True, num_workers=0, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    loss_func = torch.nn.CrossEntropyLoss(weight=weight)
    model.train()

    def step(x, y):
        optimizer.zero_grad()
        loss = loss_func(model(x), y)
        loss.backward()
        optimizer.step()

    warm_x, warm_y = next(iter(loader))
    step(warm_x, warm_y)
    start = time.perf_counter()
    for x, y in loader:
        step(x, y)
    return time.perf_counter() - start


def fastai_epoch(model, dataset, batch_size, weight, lr, seed) -> float:
    """Seconds of the training phase of one fastai ``Learner.fit`` epoch (after a warm-up fit)."""
    from fastai.callback.core import Callback
    from fastai.callback.progress import ProgressCallback  # noqa: F401 (adds Learner.no_bar)
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.optimizer import Adam
    from fastai.torch_core import set_seed

    class TrainTimer(Callback):
        order = 0

        def before_train(self):
            self.start = time.perf_counter()

        def after_train(self):
            self.seconds = time.perf_counter() - self.start

    set_seed(seed)
    valid = torch.utils.data.Subset(dataset, range(batch_size))
    dls = DataLoaders.from_dsets(dataset, valid, bs=batch_size, device=torch.device("cpu"),
                                 drop_last=(True, False), num_workers=0)
    timer = TrainTimer()
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(weight=weight),
                    opt_func=partial(Adam, mom=0.9, sqr_mom=0.999, eps=1e-8, decouple_wd=False),
                    lr=lr, wd=0.0, cbs=[timer])
    with learn.no_bar(), learn.no_logging():
        warm_dls = DataLoaders.from_dsets(valid, valid, bs=batch_size,
                                          device=torch.device("cpu"), num_workers=0)
        warm = Learner(warm_dls, model, loss_func=CrossEntropyLossFlat(weight=weight))
        with warm.no_bar(), warm.no_logging():
            warm.fit(1, lr=0.0)
        learn.fit(1, lr=lr)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--model", default="covidnet")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--width", type=float, default=None, help="override the profile's width")
    parser.add_argument("--image-size", type=int, default=None, help="override the profile's size")
    args = parser.parse_args()

    profile = get_profile(args.profile)
    overrides = {k: v for k, v in (("width", args.width), ("image_size", args.image_size)) if v}
    profile = profile.with_overrides(**overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    size, bs, width = profile.image_size, profile.batch_size, profile.width
    rng = np.random.default_rng(0)
    n = args.steps * bs
    images = rng.random((n, size, size)).astype(np.float32)
    labels = np.arange(n) % 3
    dataset = ClassifierDataset(images, labels)
    weight = torch.from_numpy(balanced_class_weights(labels, 3))
    torch.manual_seed(0)
    model = build_classifier(args.model, 3, image_size=size, width=width)
    print(f"{args.model} width {width}, {size} px, batch {bs}, {args.steps} steps x {args.rounds} "
          f"rounds, {torch.get_num_threads()} torch thread(s), CPU")

    bare_rates, fastai_rates = [], []
    for r in range(args.rounds):
        t_bare = bare_pytorch_epoch(copy.deepcopy(model), dataset, bs, weight, 1e-4, seed=r)
        t_fastai = fastai_epoch(copy.deepcopy(model), dataset, bs, weight, 1e-4, seed=r)
        bare_rates.append(n / t_bare)
        fastai_rates.append(n / t_fastai)
        print(f"round {r}: bare PyTorch {n / t_bare:7.1f} img/s   fastai {n / t_fastai:7.1f} img/s")
    bare, fast = statistics.median(bare_rates), statistics.median(fastai_rates)
    print(f"median: bare PyTorch {bare:.1f} img/s, fastai {fast:.1f} img/s, "
          f"ratio fastai/bare = {fast / bare:.3f} (target >= 0.90)")

    start = time.perf_counter()
    predict(model, images, batch_size=64)
    infer = n / (time.perf_counter() - start)
    n_images = profile.n_arias
    n_test = n_images / profile.folds
    n_valid = 0.1 * (n_images - n_test)
    n_train = n_images - n_test - n_valid
    train_s = profile.epochs * n_train / fast
    eval_s = profile.epochs * n_valid / infer + n_images / infer  # validation + embeddings
    print(f"inference {infer:.1f} img/s")
    print(f"estimated fold at profile '{profile.name}' ({n_images} images, {profile.folds} folds, "
          f"{profile.epochs} epochs): train {train_s:.0f} s + evaluate {eval_s:.0f} s = "
          f"{(train_s + eval_s) / 60:.1f} min; one view x {profile.folds} folds x "
          f"{profile.repetitions} repetition(s) = "
          f"{(train_s + eval_s) * profile.folds * profile.repetitions / 60:.1f} min")


if __name__ == "__main__":
    main()
