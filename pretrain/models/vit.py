"""ViT: a pre-norm encoder over image patches with a [CLS] token and a classification head.

Patches come from a stride-``patch_size`` convolution; positions are learned for the config's
``image_size`` and interpolated bicubically (as HF ``interpolate_pos_encoding``) for other sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.config import ModelConfig
from pretrain.models.core import Transformer


class ViT(Transformer):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, causal=False)
        h, p = cfg.hidden_size, cfg.patch_size
        self.grid = cfg.image_size // p
        self.patch_embed = nn.Conv2d(cfg.num_channels, h, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, h))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, h))
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(h, cfg.num_classes)

    def positions(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings [1, 1 + gh * gw, H]; bicubic interpolation of the patch part when the
        grid differs from the trained one (the [CLS] position is kept as is)."""
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        h = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, h).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, h)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> final hidden states [B, 1 + patches, hidden] ([CLS] first)."""
        x = self.patch_embed(pixel_values)  # [B, hidden, gh, gw]
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.positions(gh, gw)
        return self.run_layers(self.drop(x))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> class logits [B, num_classes] from the [CLS] token."""
        return self.head(self.encode(pixel_values)[:, 0])

    def loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.forward(batch["pixel_values"]).float(), batch["labels"])

    def residual_projections(self) -> tuple[str, ...]:
        return ("attn.out.weight", "mlp.fc_out.weight")
