"""How the generators and the CiT classifier are trained together: :class:`CiTRecipe` and the
named recipes :data:`CIT_RECIPES` (``fucitnet2020`` as in the paper, ``fucitnet-fast`` on a
CPU)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["CiTRecipe", "CIT_RECIPES"]


@dataclass(frozen=True)
class CiTRecipe:
    """How the generators and the CiT classifier are trained together.

    Attributes
    ----------
    name, source : recipe name and where its values come from.
    lam : weight lambda of the classifier cross-entropy in the generator loss.
    perceptual_weight, tv_weight : weights of the perceptual MSE and the total variation.
    generator_lr, generator_weight_decay : Adam for the generators (L2 weight decay).
    classifier_lr : Adam for the classifier, multiplied by ``gamma`` every ``step_size`` epochs.
    batch_size, epochs : images per step, passes over the training split.
    early_stopping_patience : stop after this many epochs without a lower validation loss
        (the cross-entropy of the fused FuCiTNet prediction); the best epoch's weights are kept.
    warmup_epochs : first epochs trained with lambda = 0, so that the generators learn to
        reconstruct their input before the classifier's gradient reaches them (as SRGAN
        pretrains its generator on the pixel loss); 0 in the paper. The last epoch always has
        lambda, and only epochs with lambda are candidates for the kept weights.
    precise_bn_batches : before each validation, recompute the batch-norm statistics of the
        generators (on their class's training images) and of the classifier (on the transformed
        images) from this many training batches (0: off), as ``precise_bn_batches`` of
        :class:`cxrlib.train.training.TrainingRecipe`: after a few quick steps the running averages
        lag behind the weights.
    """

    name: str
    source: str
    lam: float = 0.05
    perceptual_weight: float = 0.006
    tv_weight: float = 2e-8
    generator_lr: float = 1e-4
    generator_weight_decay: float = 1e-4
    classifier_lr: float = 1e-3
    step_size: int = 5
    gamma: float = 0.1
    batch_size: int = 32
    epochs: int = 30
    early_stopping_patience: int | None = 5
    warmup_epochs: int = 0
    precise_bn_batches: int = 0

    def __post_init__(self):
        if self.lam < 0 or self.batch_size < 2 or self.epochs < 1:
            raise ValueError(f"CiT recipe {self.name!r}: lam must be >= 0, batch_size >= 2 and "
                             f"epochs >= 1 (got {self.lam}, {self.batch_size}, {self.epochs})")

    def with_overrides(self, **changes) -> "CiTRecipe":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


CIT_RECIPES = {
    "fucitnet2020": CiTRecipe(
        name="fucitnet2020", source="seed 000 / FuCiTNet: generators Adam 1e-4 (weight decay "
        "1e-4), ResNet-18 Adam 1e-3 StepLR(5, 0.1), batch 32, lambda 0.05, early stopping"),
    "fucitnet-fast": CiTRecipe(
        name="fucitnet-fast", source="FuCiTNet with generator learning rate 1e-3 (not 1e-4), "
        "so that randomly initialised generators approach the identity within a few CPU epochs, "
        "a first epoch without the classifier term (lambda 0) and precise batch-norm statistics "
        "before each validation", generator_lr=1e-3, warmup_epochs=1, precise_bn_batches=4),
}
