"""A small CNN that names the shape and the colour of a synthetic scene's largest object.

It is the judge of the stand-in checks (``lightning-fcae stand-ins check``): trained on real benchmark
images (training split), it tells whether images the LDM draws from a condition show the shape and the
colour that condition names. Independent of the CLIP stand-in, which the LDM is conditioned on and which
would otherwise grade its own homework.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class SceneClassifier(ModelMixin, ConfigMixin):
    """``[b, 3, H, W]`` in [0, 1] -> shape logits ``[b, num_shapes]`` and colour logits ``[b, num_colors]``.

    Three conv blocks (width, 2 width, 4 width) with two 2x poolings and a global average: any input
    size works; trained at the benchmark's reconstruction size. Saved as a diffusers model folder.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, num_shapes: int = 10, num_colors: int = 8, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _block(3, width),
            nn.MaxPool2d(2),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_shapes + num_colors)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.features(images * 2 - 1))  # b (shapes + colours)
        return logits.split([self.config.num_shapes, self.config.num_colors], dim=1)
