"""Measured sample quality without downloads: a Fréchet distance on the features of a small
classifier trained here, on the same labelled data (Inception weights cannot be fetched offline).

    extractor = train_feature_classifier(images, labels)     # a small CNN, seeded, a few hundred steps
    fd = frechet_distance_between(extractor, real, fake)

FD = |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)) over the classifier's penultimate features
(64 dimensions). The figures are comparable only between samples scored by the same extractor.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DataError


class FeatureClassifier(nn.Module):
    """conv 32 -> conv 64 (stride 2) -> 4x4 pooling -> 64 features -> classes."""

    def __init__(self, channels: int, classes: int, features: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64 * 16, features)
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        h = F.adaptive_avg_pool2d(h, 4).flatten(1)
        return F.relu(self.fc(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_feature_classifier(images: torch.Tensor, labels: torch.Tensor, *, steps: int = 600,
                             batch_size: int = 128, lr: float = 2e-3, seed: int = 0) -> FeatureClassifier:
    """A classifier of `labels` from `images` ([-1, 1]); returns it in eval mode."""
    if labels is None:
        raise DataError("the Fréchet distance needs labelled data to train its feature classifier",
                        hint="use --data digits or fashion-mnist")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = FeatureClassifier(images.shape[1], int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(1) == labels).float().mean())


@torch.no_grad()
def feature_stats(model: FeatureClassifier, images: torch.Tensor, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of the features of `images`."""
    feats = torch.cat([model.features(images[i:i + batch]) for i in range(0, images.shape[0], batch)])
    f = feats.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2); tr((s1 s2)^(1/2)) is computed as
    tr((s1^(1/2) s2 s1^(1/2))^(1/2)), which is symmetric and so stable for PSD inputs."""
    a = _sqrt_psd(s1)
    middle = a @ s2 @ a
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def frechet_distance_between(model: FeatureClassifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    return frechet_distance(*feature_stats(model, real), *feature_stats(model, fake))


def gaussian_baseline(images: torch.Tensor, num: int, seed: int = 0) -> torch.Tensor:
    """`num` samples of a Gaussian fitted to the pixels (mean and full covariance), clipped to [-1, 1]."""
    x = images.flatten(1).double().numpy()
    rng = np.random.default_rng(seed)
    samples = rng.multivariate_normal(x.mean(0), np.cov(x, rowvar=False), size=num, method="eigh")
    return torch.tensor(samples, dtype=torch.float32).view(num, *images.shape[1:]).clamp(-1, 1)
