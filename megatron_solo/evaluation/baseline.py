"""The yardstick a learned classifier must beat: logistic regression on the raw pixels of the same images.

Train and held-out images are the ones stored in the shards (after SOLO's resize), their features the
normalised pixel values, their label the stored caption; so the baseline sees exactly what the model saw.
"""

from __future__ import annotations

import numpy as np

from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.heldout import HeldOutSet


def _pixels_and_labels(data: HeldOutSet) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    features, labels = [], []
    for i in range(len(data)):
        sample = data.load(i)
        doc = sample.doc
        if doc.patches is None:
            raise EvaluationError(f"{data.path}: sample {sample.key} has no image")
        features.append(doc.patches.reshape(-1).numpy())
        labels.append(tuple(doc.ids[doc.target].tolist()))  # caption tokens and </s>: the class
    sizes = {f.shape[0] for f in features}
    if len(sizes) > 1:
        raise EvaluationError(f"{data.path}: images of several sizes; the pixel baseline needs one size")
    return np.stack(features), labels


def logistic_regression_baseline(train: str, heldout: str, patch_size: int, max_samples: int | None = None) -> dict:
    """Held-out accuracy of standardised logistic regression trained on the pixels of ``train``'s images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = _pixels_and_labels(HeldOutSet(train, patch_size))
    x_test, y_test = _pixels_and_labels(HeldOutSet(heldout, patch_size, max_samples))
    if x_train.shape[1] != x_test.shape[1]:
        raise EvaluationError(f"{train} and {heldout} hold images of different sizes")
    classes = {c: k for k, c in enumerate(sorted(set(y_train) | set(y_test)))}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_train, [classes[c] for c in y_train])
    accuracy = float(clf.score(x_test, [classes[c] for c in y_test]))
    return {"accuracy": accuracy, "train": len(y_train), "n": len(y_test), "features": int(x_train.shape[1])}
