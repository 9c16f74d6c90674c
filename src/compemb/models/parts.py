"""Named parts that DLRM and DCN are assembled from (TorchRec style).

Letters: B batch, F features (F_out vectors after feature generation), D embedding width,
I input width of a part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def init_reference_mlp(layer: nn.Linear) -> None:
    """The reference DLRM's init: weight ~ N(0, 2/(fan_in + fan_out)), bias ~ N(0, 1/fan_out).

    Xavier-normal weights keep activations at one scale through the ReLU stack; the reference
    draws biases from N(0, 1/fan_out) too, and we keep that so results compare with it.
    """
    fan_out, fan_in = layer.weight.shape
    with torch.no_grad():
        layer.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        layer.bias.normal_(0.0, math.sqrt(1.0 / fan_out))


class MLP(nn.Sequential):
    """Linear layers with ReLU between them, initialized as the reference DLRM.

    Shapes: (B, I) -> (B, sizes[-1]).

    Args:
        in_features: I.
        sizes: output width of each layer.
        final_activation: ReLU after the last layer too (the DLRM bottom MLP has one).

    >>> MLP(13, (512, 256, 64, 16), final_activation=True)(torch.zeros(4, 13)).shape
    torch.Size([4, 16])
    """

    def __init__(
        self,
        in_features: int,
        sizes: Sequence[int],
        *,
        final_activation: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        layers: list[nn.Module] = []
        width = in_features
        for j, size in enumerate(sizes):
            linear = nn.Linear(width, size, device=device, dtype=dtype)
            init_reference_mlp(linear)
            layers.append(linear)
            if j < len(sizes) - 1 or final_activation:
                layers.append(nn.ReLU())
            width = size
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = width


class DenseArch(nn.Module):
    """DLRM's bottom MLP: dense features to one more vector of width D (ReLU on every layer).

    Shapes: (B, num_dense) -> (B, D).

    >>> DenseArch(13, (512, 256, 64), 16)(torch.zeros(2, 13)).shape
    torch.Size([2, 16])
    """

    def __init__(
        self,
        num_dense: int,
        hidden: Sequence[int],
        embedding_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.mlp = MLP(
            num_dense, (*hidden, embedding_dim), final_activation=True, device=device, dtype=dtype
        )

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(dense)


class DotInteraction(nn.Module):
    """Dot products of all pairs of V vectors, strictly lower triangle (no self-dots).

    Shapes: (B, V, D) -> (B, V (V - 1) / 2), pairs in row-major order of the lower triangle.

    >>> DotInteraction(3)(torch.ones(2, 3, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, num_vectors: int, *, device: torch.device | str | None = None):
        super().__init__()
        self.num_vectors = num_vectors
        rows, cols = torch.tril_indices(num_vectors, num_vectors, offset=-1, device=device)
        # Flat positions into the (V, V) Gram matrix, computed once.
        self.register_buffer("_pairs", rows * num_vectors + cols, persistent=False)

    @property
    def out_features(self) -> int:
        return self.num_vectors * (self.num_vectors - 1) // 2

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        return gram.flatten(1)[:, self._pairs]


class CrossNetwork(nn.Module):
    """DCN's cross network: ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l`` for L layers.

    ``w_l`` and ``b_l`` are vectors of the input width I. Init: ``w_l ~ N(0, 2/(I + 1))``
    (Xavier normal for an I -> 1 map, as the reference MLPs), ``b_l = 0`` so every layer starts
    near the identity plus a small cross term.

    Shapes: (B, I) -> (B, I).

    >>> CrossNetwork(8, 6)(torch.ones(2, 8)).shape
    torch.Size([2, 8])
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_layers, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_layers, in_features, **kw))
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / (in_features + 1)))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weight, self.bias, strict=True):
            x = x0 * (x @ w).unsqueeze(1) + b + x
        return x


class OverArch(nn.Module):
    """The top network: an MLP whose last layer has one output, the logit.

    Shapes: (B, I) -> (B,).

    >>> OverArch(367, (512, 256))(torch.zeros(2, 367)).shape
    torch.Size([2])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.mlp = MLP(in_features, (*hidden, 1), final_activation=False, device=device,
                       dtype=dtype)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)
