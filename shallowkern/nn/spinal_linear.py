"""SpinalLinear: a SpinalNet classifier head (arXiv 2007.03347) on the fused spinal_linear op."""

from __future__ import annotations

import torch
import torch.fx
from torch import Tensor, nn

from ..ops import spinal_linear as _sl
from ..ops import spinal_train as _st


def spinal_linear_module_forward(input: Tensor, weight_x: list[Tensor], weight_h: list[Tensor],
                                 bias: list[Tensor], out_weight: Tensor, out_bias: Tensor | None,
                                 cfg: tuple) -> Tensor:
    """The module's fused call (shape check + functional), wrapped for ``torch.fx``:
    ``symbolic_trace`` records one node instead of tracing the functional's Python dispatch."""
    in_features, splits, activation = cfg
    if input.dim() != 2 or input.shape[-1] != in_features:
        raise ValueError(f"SpinalLinear: input must be (B, {in_features}), got {tuple(input.shape)}")
    return _sl.spinal_linear(input, weight_x, weight_h, bias or None, out_weight, out_bias,
                             splits=splits, activation=activation)


torch.fx.wrap("spinal_linear_module_forward")


class SpinalLinear(nn.Module):
    """SpinalNet head: ``num_layers`` narrow layers that read the input split by split.

    Layer i reads split i mod ``splits`` of the input (tensor_split rule when ``in_features`` is
    not divisible, see ``shallowkern.ops.spinal_linear``) and the previous layer's output:
    h_i = act(BN(W_i^x drop(x_s) + W_i^h drop(h_{i-1}) + b_i)); y = W_o drop([h_0..h_{L-1}]) + b_o.

    Args: in_features F, out_features O, layer_width W (keyword), num_layers L, splits S,
    activation ('relu', 'tanh', 'sigmoid', 'identity'), batch_norm (BatchNorm1d on each z_i),
    dropout (probability on every layer input and on the output layer input, as in the
    SpinalNet scripts), bias (b_i and b_o).

    Parameters (no concatenated weight is stored or built): ``weight_x.{i}`` (W, F_{i mod S}),
    ``weight_h.{i}`` (W, W) for layer i + 1, ``bias.{i}`` (W,), ``out_weight`` (O, L*W),
    ``out_bias`` (O,), ``norms.{i}`` BatchNorm1d(W). Initialised as nn.Linear would initialise
    the concatenated [W_i^x | W_i^h].

    Input (B, F) -> (B, O). Eval mode (or training without BatchNorm and dropout) runs the fused
    op with BatchNorm folded; training with BatchNorm or dropout > 0 runs the fused training op
    (batch statistics, running-statistics update as nn.BatchNorm1d, dropout masks; see
    ``shallowkern.ops.spinal_train``).
    """

    def __init__(self, in_features: int, out_features: int, *, layer_width: int, num_layers: int = 4,
                 splits: int = 2, activation: str = "relu", batch_norm: bool = False,
                 dropout: float = 0.0, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        _sl.check_config(in_features, out_features, layer_width, num_layers, splits, activation)
        if not (isinstance(dropout, (int, float)) and 0.0 <= float(dropout) < 1.0):
            raise ValueError(f"SpinalLinear: dropout must be a probability in [0, 1), got {dropout!r}")
        fk = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.layer_width, self.num_layers, self.splits = layer_width, num_layers, splits
        self.activation, self.batch_norm, self.dropout = activation, batch_norm, float(dropout)
        sizes = _sl.split_sizes(in_features, splits)
        W = layer_width
        self.weight_x = nn.ParameterList(
            [nn.Parameter(torch.empty(W, sizes[i % splits], **fk)) for i in range(num_layers)])
        self.weight_h = nn.ParameterList(
            [nn.Parameter(torch.empty(W, W, **fk)) for _ in range(num_layers - 1)])
        self.bias = nn.ParameterList(
            [nn.Parameter(torch.empty(W, **fk)) for _ in range(num_layers)] if bias else [])
        self.out_weight = nn.Parameter(torch.empty(out_features, num_layers * W, **fk))
        self.out_bias = nn.Parameter(torch.empty(out_features, **fk)) if bias else None
        self.norms = nn.ModuleList([nn.BatchNorm1d(W, **fk) for _ in range(num_layers)]) if batch_norm else None
        self._folded: tuple | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        splits, W = self.splits, self.layer_width
        sizes = _sl.split_sizes(self.in_features, splits)
        with torch.no_grad():
            for i in range(self.num_layers):
                bound = _sl.init_bound(sizes[i % splits] + (W if i > 0 else 0))
                # kaiming_uniform(a=sqrt(5)) on the concatenated weight == U(-bound, bound)
                self.weight_x[i].uniform_(-bound, bound)
                if i > 0:
                    self.weight_h[i - 1].uniform_(-bound, bound)
                if len(self.bias):
                    self.bias[i].uniform_(-bound, bound)
            bound = _sl.init_bound(self.num_layers * W)
            self.out_weight.uniform_(-bound, bound)
            if self.out_bias is not None:
                self.out_bias.uniform_(-bound, bound)
        if self.norms is not None:
            for n in self.norms:
                n.reset_parameters()
        self._folded = None

    # -- BatchNorm folding (inference) ---------------------------------------------------------
    def _lists(self) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        # ParameterList.__iter__ costs ~1 us per element (getattr by name); its dict is ordered
        return (list(self.weight_x._parameters.values()), list(self.weight_h._parameters.values()),
                list(self.bias._parameters.values()))

    def _fold_key(self) -> tuple:
        ts = [t for l in self._lists() for t in l]
        for n in self.norms:
            ts += [n.running_mean, n.running_var, n.weight, n.bias]
        return tuple((id(t), t._version, t.device, t.dtype) for t in ts if t is not None)

    def folded_parameters(self) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """(weight_x, weight_h, bias) with the inference BatchNorm folded in (cached by version)."""
        wx, wh, b = self._lists()
        if self.norms is None:
            return wx, wh, b
        n0 = self.norms[0]
        if n0.running_mean is None:
            raise RuntimeError("SpinalLinear: BatchNorm without running statistics cannot be folded")
        args = (wx, wh, b or None,
                [n.running_mean for n in self.norms], [n.running_var for n in self.norms],
                [n.weight for n in self.norms], [n.bias for n in self.norms], n0.eps)
        if torch.compiler.is_compiling() or torch.is_grad_enabled():
            return _sl.fold_bn(*args)  # keeps the graph to the parameters; no stale cache
        key = self._fold_key()
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, _sl.fold_bn(*args))
        return self._folded[1]

    def forward(self, input: Tensor) -> Tensor:
        if self.training and (self.norms is not None or self.dropout > 0.0):
            # batch statistics / dropout: the fused training op (shallowkern.ops.spinal_train)
            if input.dim() != 2 or input.shape[-1] != self.in_features:
                raise ValueError(f"SpinalLinear: input must be (B, {self.in_features}), got "
                                 f"{tuple(input.shape)}")
            wx, wh, b = self._lists()
            kw = {} if self.norms is None else _st.batchnorm_train_kwargs(self.norms, input.shape[0])
            if kw is None:  # BatchNorm layers configured differently: layer by layer
                return _sl.spinal_linear_reference(
                    input, wx, wh, b or None, self.out_weight, self.out_bias, splits=self.splits,
                    activation=self.activation, norms=self.norms, dropout=self.dropout, training=True)
            return _st.spinal_linear_train(input, wx, wh, b or None, self.out_weight, self.out_bias,
                                           splits=self.splits, activation=self.activation,
                                           dropout=self.dropout, **kw)
        wx, wh, b = self.folded_parameters()
        return spinal_linear_module_forward(input, wx, wh, b, self.out_weight, self.out_bias,
                                            (self.in_features, self.splits, self.activation))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"layer_width={self.layer_width}, num_layers={self.num_layers}, splits={self.splits}, "
                f"activation={self.activation!r}, batch_norm={self.batch_norm}, dropout={self.dropout}, "
                f"bias={self.out_bias is not None}")
