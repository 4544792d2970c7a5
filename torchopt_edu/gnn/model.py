"""A graph convolutional network built from PyG's ``GCNConv`` layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

from torch import Tensor, nn
from torch_geometric.nn import GCNConv

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
}
NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}


class GCN(nn.Module):
    r"""A stack of graph convolutions (Kipf & Welling, ICLR 2017, arXiv:1609.02907).

    Each layer ``l`` is a ``GCNConv`` with weight ``Theta_l`` and bias ``b_l``:

        H_{l+1} = D^{-1/2} (A + I) D^{-1/2} H_l Theta_l + b_l,     D_ii = 1 + sum_j A_ij

    (``A`` weighted by ``edge_weight`` when given). Every layer but the last is followed by
    ``norm`` (optional), the activation and dropout, in that order, and with
    ``residual=True`` its input is added back, through a bias-free linear map ``P_l`` when
    the widths differ:

        H_{l+1} = dropout(act(norm(GCNConv_l(H_l)))) + P_l H_l

    The last layer outputs raw scores (logits for classification, values for regression).
    The source document's model, ``GCNConv(10, 64) -> ReLU -> GCNConv(64, 1)``, is
    ``GCN(10, [64], 1)``.

    ``cached=True`` lets each ``GCNConv`` compute the normalised adjacency
    ``D^{-1/2} (A + I) D^{-1/2}`` on its first call and reuse it. That is exact in
    transductive full-batch training, where every forward pass sees the same graph, and it
    saves recomputing degrees and self-loops every epoch; it is wrong as soon as the model
    sees another graph, so it is off by default. The cache is dropped by
    :meth:`reset_parameters` and whenever the module is moved or cast (``.to(...)``).

    Shapes:
        input: ``x [N, in_channels]``, ``edge_index [2, E]`` (int64), ``edge_weight [E]``
        (optional); output: ``[N, out_channels]``.

    Args:
        in_channels: node feature size F.
        hidden_channels: width of each hidden layer; ``[]`` gives a single GCNConv.
        out_channels: output size (number of classes, or of regression targets).
        activation: one of ``ACTIVATIONS`` ("relu", "elu", "gelu", "leaky_relu", "tanh").
        dropout: probability of zeroing a hidden unit during training, in ``[0, 1)``.
        residual: add each hidden layer's input to its output.
        norm: None, "batch" (BatchNorm1d over nodes) or "layer" (LayerNorm per node).
        cached: cache the normalised adjacency (transductive full-batch only, see above).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: Sequence[int],
        out_channels: int,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        residual: bool = False,
        norm: str | None = None,
        cached: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_channels, Sequence):
            raise TypeError(
                f"hidden_channels must be a sequence of widths such as [64], got "
                f"{hidden_channels!r}"
            )
        widths = [in_channels, *hidden_channels, out_channels]
        if any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(
                f"channel sizes must be positive ints, got in_channels="
                f"{in_channels}, hidden_channels={list(hidden_channels)}, "
                f"out_channels={out_channels}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if norm is not None and norm not in NORMS:
            raise ValueError(f"norm must be None or one of {sorted(NORMS)}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.convs = nn.ModuleList(
            GCNConv(w_in, w_out, cached=cached) for w_in, w_out in pairwise(widths)
        )
        hidden = list(pairwise(widths))[:-1]
        self.norms = nn.ModuleList(
            NORMS[norm](w_out) if norm else nn.Identity() for _, w_out in hidden
        )
        self.skips = (
            nn.ModuleList(
                nn.Identity() if w_in == w_out else nn.Linear(w_in, w_out, bias=False)
                for w_in, w_out in hidden
            )
            if residual
            else None
        )
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        """Re-initialise every layer (glorot weights, zero biases) and drop cached graphs."""
        for module in [*self.convs, *self.norms, *(self.skips or [])]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def clear_cache(self) -> None:
        """Forget the normalised adjacency cached by ``cached=True`` layers."""
        for conv in self.convs:
            conv._cached_edge_index = None
            conv._cached_adj_t = None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> GCN:
        # The cache is not a buffer, so .to()/.cuda()/.double() would leave it behind.
        self.clear_cache()
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        """Node outputs ``[N, out_channels]`` from ``x [N, F]`` and ``edge_index [2, E]``."""
        *hidden_convs, last_conv = self.convs
        for layer, conv in enumerate(hidden_convs):
            h = self.dropout(self.activation(self.norms[layer](conv(x, edge_index, edge_weight))))
            x = h + self.skips[layer](x) if self.skips is not None else h
        return last_conv(x, edge_index, edge_weight)

    def extra_repr(self) -> str:
        """Show the options that the child modules do not."""
        return f"residual={self.skips is not None}"


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars, ``sum_p numel(p)`` over parameters with grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
