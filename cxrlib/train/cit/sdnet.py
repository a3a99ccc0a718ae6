"""COVID-SDNet's four classes and fusion rule: its training set from both transforms of each
image (:func:`sdnet_dataset`), seed 000's rule that fuses the 4-class predictions of an image's
two transforms (:func:`sdnet_fusion`) and a (negative, positive) score per image for the
predictions table (:func:`sdnet_probabilities`). Arrays in, arrays out; the 4-class network
itself is trained fold by fold in :mod:`cxrlib.train.cit.crossval`."""
from __future__ import annotations

import numpy as np

__all__ = ["SDNET_CLASSES", "sdnet_dataset", "sdnet_fusion", "sdnet_probabilities"]


#: COVID-SDNet's four classes, in the paper's order: true class P/N, transform +/-.
SDNET_CLASSES = ("P+", "P-", "N+", "N-")


def sdnet_dataset(transformed: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COVID-SDNet's training set from both transforms of binary-labelled images.

    Parameters
    ----------
    transformed : (2, N, S, S): index 0 the negative transform ``G_N x``, 1 the positive
        ``G_P x`` (:func:`transform_images` with generators ordered as the classes
        ``[negative, positive]``).
    labels : (N,) 0 = negative (N), 1 = positive (P).

    Returns images (2N, S, S) - all positive transforms, then all negative ones - and their
    indices into :data:`SDNET_CLASSES` (P+, P-, N+, N-).
    """
    transformed = np.asarray(transformed)
    labels = np.asarray(labels)
    if transformed.ndim != 4 or transformed.shape[0] != 2 or transformed.shape[1] != len(labels):
        raise ValueError(f"transformed must be (2, {len(labels)}, S, S), got {transformed.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("COVID-SDNet needs binary labels (0 negative, 1 positive)")
    positive = labels == 1
    plus = np.where(positive, SDNET_CLASSES.index("P+"), SDNET_CLASSES.index("N+"))
    minus = np.where(positive, SDNET_CLASSES.index("P-"), SDNET_CLASSES.index("N-"))
    return (np.concatenate([transformed[1], transformed[0]]),
            np.concatenate([plus, minus]).astype(np.int64))


def _check_sdnet_pair(theta: np.ndarray, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    theta, psi = np.asarray(theta, dtype=float), np.asarray(psi, dtype=float)
    if theta.ndim != 2 or theta.shape[1] != 4 or theta.shape != psi.shape:
        raise ValueError(f"theta and psi must both be (N, 4) probabilities over {SDNET_CLASSES}, "
                         f"got {theta.shape} and {psi.shape}")
    return theta, psi


def sdnet_fusion(theta: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Seed 000's fusion of the two predictions of an image: True where it is called positive.

    Parameters
    ----------
    theta : (N, 4) probabilities of the positive transform ``G_P x`` over (P+, P-, N+, N-).
    psi : (N, 4) probabilities of the negative transform ``G_N x``.

    Rule: (a) ``argmax theta`` is N+ and ``argmax psi`` is N-: negative; (b) ``argmax theta``
    is P+ and ``argmax psi`` is P-: positive; (c) otherwise negative when
    ``max(theta_N+, theta_N-, psi_N+, psi_N-) > max(theta_P+, theta_P-, psi_P+, psi_P-)``,
    positive otherwise (ties go to positive).
    """
    theta, psi = _check_sdnet_pair(theta, psi)
    top_theta, top_psi = theta.argmax(axis=1), psi.argmax(axis=1)
    rule_a = (top_theta == SDNET_CLASSES.index("N+")) & (top_psi == SDNET_CLASSES.index("N-"))
    rule_b = (top_theta == SDNET_CLASSES.index("P+")) & (top_psi == SDNET_CLASSES.index("P-"))
    largest_p = np.maximum(theta[:, :2].max(axis=1), psi[:, :2].max(axis=1))
    largest_n = np.maximum(theta[:, 2:].max(axis=1), psi[:, 2:].max(axis=1))
    return np.where(rule_a, False, np.where(rule_b, True, ~(largest_n > largest_p)))


def sdnet_probabilities(theta: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """A (negative, positive) score per image for the predictions table: float (N, 2).

    The largest N and the largest P probability over both transforms, normalised to sum to 1;
    rule (c) of :func:`sdnet_fusion` is their comparison, and rules (a)/(b) agree with it
    except on exact ties (the fused decision itself is :func:`sdnet_fusion`).
    """
    theta, psi = _check_sdnet_pair(theta, psi)
    largest_p = np.maximum(theta[:, :2].max(axis=1), psi[:, :2].max(axis=1))
    largest_n = np.maximum(theta[:, 2:].max(axis=1), psi[:, 2:].max(axis=1))
    scores = np.clip(np.stack([largest_n, largest_p], axis=1), 1e-12, None)
    return scores / scores.sum(axis=1, keepdims=True)
