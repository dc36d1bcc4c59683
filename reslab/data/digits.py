"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download): a 2-D dataset small enough for the
2-D trunks on a CPU. A fixed, seeded, stratified 80/20 train/test split; pixels scaled to [0, 1] and standardised
with the training mean and std."""

from __future__ import annotations

import numpy as np
import torch

from reslab.data.tensors import Split, Splits


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Splits:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=split_seed, stratify=y)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    return Splits(
        name="digits",
        train=Split(torch.from_numpy((x_tr - mean) / std), torch.from_numpy(y_tr)),
        test=Split(torch.from_numpy((x_te - mean) / std), torch.from_numpy(y_te)),
        val=None,
        input_shape=(1, 8, 8),
        num_classes=10,
    )
