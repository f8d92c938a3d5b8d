"""The yardstick a learned classifier must beat: logistic regression on the raw pixels of the same images.

Train and held-out images are the ones stored in the shards (after SOLO's resize), their features the
normalised pixel values, their label the stored caption; so the baseline sees exactly what the model saw.
Where the images differ in size, each is resampled to the size most training images have.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from megatron_solo.data.image import unpatchify
from megatron_solo.data.shard_set import ShardSet
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.heldout import HeldOutSet


def check_baseline_classes(train: str) -> None:
    """EvaluationError unless ``train``'s samples hold at least two classes (read without decoding images)."""
    shards = ShardSet(train)
    classes = set()
    for i in range(len(shards)):
        sample = shards.read(i)
        classes.add(tuple(sample.ids[sample.target.astype(bool)].tolist()))
        if len(classes) > 1:
            return
    raise EvaluationError(f"--baseline-train {train}: its {len(shards)} samples hold {len(classes)} class; "
                          "logistic regression needs at least two")


def _images_and_labels(data: HeldOutSet) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
    images, labels = [], []
    for i in range(len(data)):
        sample = data.load(i)
        doc = sample.doc
        if doc.patches is None:
            raise EvaluationError(f"{data.path}: sample {sample.key} has no image")
        (rows, cols), *more = sample.grids
        if more:
            raise EvaluationError(f"{data.path}: sample {sample.key} has {len(sample.grids)} images; the pixel "
                                  "baseline takes one image per sample")
        images.append(unpatchify(doc.patches, rows, cols, data.patch_size))
        labels.append(tuple(doc.ids[doc.target].tolist()))  # caption tokens and </s>: the class
    return images, labels


def _features(images: list[torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    """Pixels of each image at ``size`` (resampled by area averaging where an image has another size)."""
    rows = [img if tuple(img.shape[1:]) == size
            else F.interpolate(img[None], size=size, mode="area")[0]
            for img in images]
    return torch.stack(rows).reshape(len(rows), -1).numpy()


def common_size(images: list[torch.Tensor]) -> tuple[int, int]:
    """The most frequent (height, width) among ``images``, ties broken by the smaller size."""
    counts = Counter(tuple(img.shape[1:]) for img in images)
    return min(counts, key=lambda hw: (-counts[hw], hw[0] * hw[1], hw))


def logistic_regression_baseline(train: str, heldout: str, patch_size: int, max_samples: int | None = None) -> dict:
    """Held-out accuracy of standardised logistic regression trained on the pixels of ``train``'s images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_images, y_train = _images_and_labels(HeldOutSet(train, patch_size))
    test_images, y_test = _images_and_labels(HeldOutSet(heldout, patch_size, max_samples))
    # Images of a set may differ in size (SOLO keeps each one's aspect ratio); a linear model needs one
    # length of feature vector, so every image is resampled to the size most of the training images have.
    size = common_size(train_images)
    x_train, x_test = _features(train_images, size), _features(test_images, size)
    classes = {c: k for k, c in enumerate(sorted(set(y_train) | set(y_test)))}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_train, [classes[c] for c in y_train])
    accuracy = float(clf.score(x_test, [classes[c] for c in y_test]))
    resized = sum(tuple(img.shape[1:]) != size for img in train_images + test_images)
    return {"accuracy": accuracy, "train": len(y_train), "n": len(y_test), "features": int(x_train.shape[1]),
            "image_size": list(size), "resized_images": int(resized)}
