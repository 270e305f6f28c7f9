"""Shared test fixtures for methods: a backbone small enough for CPU tests in milliseconds."""

from __future__ import annotations

from torch import nn


def tiny_backbone() -> nn.Module:
    """(B, 3, H, W) -> (B, 24): one conv + BN (so BatchNorm paths are exercised), pooled."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 24),
    )
