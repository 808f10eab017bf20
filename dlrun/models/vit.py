"""The Vision Transformer as d2l 11.8 builds it, for any image dataset."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.models.attention import ClassToken, LearnedPositions, encoder_blocks
from dlrun.models.layers import activation_factory


class ViT(nn.Module):
    """Patches → linear embedding, a class token, learned positions → pre-norm blocks → LayerNorm + Linear.

    d2l 11.8: 96x96 images cut into 16x16 patches (a strided convolution embeds each one in
    `hidden_size` = 512 dimensions), 2 blocks of 8 heads with an MLP of 2048 and GELU, dropout 0.1
    on the embeddings and in the blocks (`regularization.dropout=0.1`); the class token's output
    is classified. `activation` replaces the MLPs' GELU (layers.ACTIVATIONS). An image whose side is
    not a multiple of `patch_size` loses its last rows and columns, as the book's does.
    """

    def __init__(self, input_shape: list[int], num_outputs: int, patch_size: int = 16, hidden_size: int = 512,
                 mlp_size: int = 2048, num_heads: int = 8, num_layers: int = 2, dropout: float = 0.0,
                 activation: str = "gelu", activation_param: float | None = None) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"ViT reads images [C, H, W], got input_shape {list(input_shape)}")
        channels, height, width = input_shape
        if patch_size < 1 or min(height, width) < patch_size:
            raise ValueError(f"input shape {list(input_shape)} holds no {patch_size}x{patch_size} patch; resize the "
                             "images with dataset.resize (default: model.input_size) or lower model.patch_size")
        num_patches = (height // patch_size) * (width // patch_size)
        act = activation_factory(activation, activation_param)
        self.patch_embedding = nn.Conv2d(channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.class_token = ClassToken(hidden_size)
        self.positions = LearnedPositions(num_patches + 1, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.blocks = encoder_blocks(hidden_size, num_heads, mlp_size, num_layers, dropout, act)
        self.head = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, patches, hidden)
        tokens = self.dropout(self.positions(self.class_token(patches)))
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(tokens[:, 0])
