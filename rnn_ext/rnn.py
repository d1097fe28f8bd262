"""Drop-in replacements for :class:`torch.nn.RNN` and :class:`torch.nn.RNNCell` on the fused ops.

:class:`RNN` subclasses ``torch.nn.RNNBase`` (the base of ``nn.RNN``; not ``nn.RNN`` itself, which
``torch.compile`` refuses to trace) and :class:`RNNCell` subclasses ``torch.nn.RNNCell``, so they
inherit the constructor checks, parameter names, shapes, registration order, initialisation
:math:`\\mathcal{U}(-1/\\sqrt{H}, 1/\\sqrt{H})`, ``repr``, ``state_dict`` and
``flatten_parameters``; ``forward`` is replaced. Each layer and direction runs
through one call of the fused :func:`rnn_ext.ops.elman_rnn` (the cell through
:func:`rnn_ext.ops.elman_cell`). The semantics are those of the PyTorch documentation of
``torch.nn.RNN`` / ``torch.nn.RNNCell``; the argument handling mirrors ``torch/nn/modules/rnn.py``.

:class:`RNN` reads its weights as ``nn.RNN`` does: at every forward, ``nn.RNNBase``'s
``_update_flat_weights`` re-reads them by name when one is no longer the tensor it held, so
weight tying, :mod:`torch.nn.utils.parametrize` and :func:`torch.func.functional_call` see the
current weights, and a parametrization is evaluated as many times per forward as under
``nn.RNN`` (a training-mode ``spectral_norm`` runs the same power iterations).
:class:`RNNCell` reads each weight once per forward, as ``nn.RNNCell``.

:func:`convert_rnn` swaps every ``nn.RNN`` / ``nn.RNNCell`` inside a model for these modules,
keeping the very same ``Parameter`` objects (so an optimizer built before the swap stays valid).
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Type, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .ops import elman_cell, elman_rnn

__all__ = ["RNN", "RNNCell", "convert_rnn"]

_M = TypeVar("_M", bound=nn.Module)


# ---------------------------------------------------------------------------------------------
# Conversion helpers


def _retype(module: nn.Module, new_cls: Type[_M]) -> _M:
    """A new module of class ``new_cls`` (or its parametrized twin) that shares ``module``'s
    parameters, buffers, submodules, hooks and attributes (training mode, sizes, ...).

    The parameter/buffer/module dicts and weight-name lists are shallow copies, so the two
    modules hold the same tensors in their own containers. The hook dicts are shared (the same
    objects), both ways: a handle returned by ``register_*_hook`` before the conversion keeps
    working (``handle.remove()`` removes the hook from both modules), and a hook registered
    on either module afterwards is registered on both (the old module is normally dropped)."""
    cls = type(module)
    if parametrize.is_parametrized(module) and cls.__name__.startswith("Parametrized"):
        # register_parametrization swapped the class for a generated subclass holding one
        # property per parametrized tensor; build the same subclass over new_cls.
        namespace = {
            k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__", "__doc__")
        }
        new_cls = type(f"Parametrized{new_cls.__name__}", (new_cls,), namespace)
    new = new_cls.__new__(new_cls)
    state = {}
    for key, value in module.__dict__.items():
        if "hooks" in key and isinstance(value, dict):
            pass  # shared: RemovableHandle finds its hook through a weakref to this dict
        elif isinstance(value, (dict, list)):
            value = type(value)(value) if not isinstance(value, list) else list(value)
        state[key] = value
    new.__dict__.update(state)
    return new


def _check_batch_sizes(data: Tensor, batch_sizes: Tensor) -> None:
    """A PackedSequence's ``batch_sizes`` must be a 1-D CPU int64 tensor of non-negative,
    non-increasing counts summing to ``data.size(0)`` (what ``pack_padded_sequence`` makes).
    A hand-built one that is not would make ``pad_packed_sequence`` abort the process (a
    negative count) or drop rows silently (a 0 before a non-zero count); nn.RNN raises."""
    if batch_sizes.dim() != 1 or batch_sizes.device.type != "cpu" or \
            batch_sizes.dtype != torch.int64:
        raise RuntimeError(
            f"RNN: a PackedSequence's batch_sizes must be a 1-D int64 CPU tensor, got shape "
            f"{tuple(batch_sizes.shape)}, dtype {batch_sizes.dtype} on {batch_sizes.device}"
        )
    if batch_sizes.numel() == 0:
        return  # nn.RNN's IndexError follows (batch_sizes[0])
    counts = batch_sizes.tolist()
    if counts[-1] < 0 or any(a < b for a, b in zip(counts, counts[1:])):
        raise RuntimeError(
            f"RNN: a PackedSequence's batch_sizes must be non-negative and non-increasing "
            f"(sequences sorted by decreasing length), got {counts}"
        )
    if sum(counts) != data.size(0):
        raise RuntimeError(
            f"RNN: a PackedSequence's batch_sizes sum to {sum(counts)} but its data has "
            f"{data.size(0)} rows"
        )


def _check_convertible(module: nn.Module, classes: Tuple[type, ...], expected: str) -> None:
    """from_torch's check: ``module`` is exactly one of ``classes`` (parametrized or not)."""
    base = _base_class(module)
    if base in classes:
        return
    parents = [c for c in classes if isinstance(module, c)]
    if parents:
        parent = parents[-1]
        package = "torch.nn" if parent.__module__.startswith("torch") else "rnn_ext"
        raise TypeError(
            f"from_torch expects a {expected}, got {base.__name__}, a subclass of "
            f"{package}.{parent.__name__}: converting it would drop its own forward and "
            f"methods (convert_rnn leaves subclasses alone)"
        )
    raise TypeError(f"from_torch expects a {expected}, got {type(module).__name__}")


def _base_class(module: nn.Module) -> type:
    """The class of ``module`` before any parametrization was registered on it."""
    cls = type(module)
    if parametrize.is_parametrized(module) and cls.__name__.startswith("Parametrized"):
        return cls.__bases__[0]
    return cls


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast runs ``nn.RNN``'s kernels in on ``device_type`` (they are on its
    lower-precision list), or None when autocast is off there."""
    if not torch._C._is_any_autocast_enabled():
        return None
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta, ...)
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def _autocast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    """Cast like autocast does: floating tensors other than float64 go to ``dtype``."""
    if dtype is None or t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


# ---------------------------------------------------------------------------------------------
# RNN


class RNN(nn.RNNBase):
    r"""Multi-layer Elman RNN, a drop-in replacement for :class:`torch.nn.RNN` on fused kernels.

    .. math:: h_t = \phi(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),\quad
              \phi = \tanh \text{ or } \mathrm{relu}

    (PyTorch documentation, ``torch.nn.RNN``). Constructor:
    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)``, the same
    arguments, checks, errors (ValueError / TypeError), parameters ``weight_ih_l{k}[_reverse]``
    ``(H, I or D*H)``, ``weight_hh_l{k}[_reverse]`` ``(H, H)``, ``bias_ih_l{k}[_reverse]``,
    ``bias_hh_l{k}[_reverse]`` ``(H,)``, initialisation and ``repr`` as ``nn.RNN`` (inherited from
    ``nn.RNNBase``). ``state_dict`` is interchangeable with ``nn.RNN``'s (``strict=True``).

    Forward: ``forward(input, hx=None) -> (output, h_n)``.

    - ``input``: ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), ``(T, I)`` unbatched, or a
      :class:`~torch.nn.utils.rnn.PackedSequence` (sorted or not); floating dtype equal to the
      weights' (float32, float64; float16/bfloat16 where the kernels have them).
    - ``hx``: ``(num_layers * D, B, H)`` (``(num_layers * D, H)`` unbatched), D = 2 if
      bidirectional else 1; zeros when omitted. Same dtype and device as ``input``.
    - ``output``: ``(T, B, D * H)`` (batch_first: ``(B, T, D * H)``; unbatched ``(T, D * H)``;
      packed input gives a PackedSequence); ``h_n`` like ``hx``, ordered
      ``[layer0 forward, layer0 backward, layer1 forward, ...]``.

    With ``dropout > 0`` in training mode, dropout is applied to each layer's output except the
    last (as ``nn.RNN``; the random masks differ from ``nn.RNN``'s). Under autocast, input, hx
    and weights are cast to the autocast dtype (float64 ones are left alone), as ``nn.RNN``.

    Raises (the same exception types and messages as ``nn.RNN``):
        ValueError: input of rank other than 2 or 3; input dtype unlike the weights'.
        RuntimeError: ``input.size(-1) != input_size``; hx of the wrong rank or shape; hx of
            another dtype or device than input; input on another device than the weights; a
            sequence of length 0.
        AssertionError: ``self.mode`` changed to something other than ``"RNN_TANH"`` /
            ``"RNN_RELU"`` (the activation follows ``mode``, as in ``nn.RNN``).

    Gradients: through the fused backward operator (``rnn_ext::elman_backward``), exact. It
    reads the forward's output, so an in-place change of a unidirectional ``output`` before
    ``backward`` is autograd's "modified by an inplace operation" error (as ``nn.RNN`` on
    cuDNN; its CPU path allows it).

    It subclasses ``nn.RNNBase`` rather than ``nn.RNN`` because ``torch.compile`` (Dynamo)
    refuses to trace any instance of ``nn.RNN`` (graph break, and an error under
    ``fullgraph=True``); ``isinstance(m, torch.nn.RNNBase)`` holds, ``isinstance(m, nn.RNN)`` not.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        **kwargs,
    ) -> None:
        # nn.RNN's own checks, in its order and with its messages.
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        self.nonlinearity = nonlinearity
        if nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        super().__init__(
            mode, input_size, hidden_size, num_layers, bias, batch_first,
            dropout, bidirectional, device=device, dtype=dtype, **kwargs,
        )

    def check_input(self, input: Tensor, batch_sizes: Optional[Tensor]) -> None:
        """``nn.RNN``'s input check (same messages), against the first weight's dtype."""
        weight = self._flat_weights[0]
        if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: "
                f"model.to({input.dtype})"
            )
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(
                f"input must have {expected_input_dim} dimensions, got {input.dim()}"
            )
        if self.input_size != input.size(-1):
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {input.size(-1)}"
            )

    def forward(self, input, hx: Optional[Tensor] = None):
        """Run the RNN; see the class docstring for shapes, dtypes and errors."""
        # As nn.RNN.forward: refresh self._flat_weights from the module's attributes (a
        # parametrization, functional_call or a replaced Parameter gives new tensors) and read
        # the weights from that list only, so a parametrization is evaluated exactly as often as
        # under nn.RNN.
        self._update_flat_weights()
        weights = dict(zip(self._flat_weights_names, self._flat_weights))
        num_directions = 2 if self.bidirectional else 1
        is_packed = isinstance(input, PackedSequence)
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if is_packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self.check_input(data, batch_sizes)  # nn.RNN's checks of data come first
            _check_batch_sizes(data, batch_sizes)
            max_batch_size = int(batch_sizes[0])
            x = data
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            x = input
            if x.dim() not in (2, 3):
                raise ValueError(
                    f"RNN: Expected input to be 2D or 3D, got {x.dim()}D tensor instead"
                )
            is_batched = x.dim() == 3
            if not is_batched:
                x = x.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            "For unbatched 2-D input, hx should also be 2-D but got "
                            f"{hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            max_batch_size = x.size(0) if self.batch_first else x.size(1)

        if hx is None:
            hx = torch.zeros(
                self.num_layers * num_directions, max_batch_size, self.hidden_size,
                dtype=x.dtype, device=x.device,
            )
        else:
            # Each row of hx belongs to the sequence the caller passed at that position.
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(x, hx, batch_sizes)
        # As nn.RNN.forward: the activation follows self.mode (set from nonlinearity at
        # construction; nn.RNNBase's attribute), not self.nonlinearity.
        if self.mode != "RNN_TANH" and self.mode != "RNN_RELU":
            raise AssertionError(f"mode must be RNN_TANH or RNN_RELU, got {self.mode}")
        nonlinearity = "tanh" if self.mode == "RNN_TANH" else "relu"
        cast = _autocast_dtype(x.device.type)
        x, hx = _autocast(x, cast), _autocast(hx, cast)
        self._check_dtype_device(x, hx, self._flat_weights)

        lengths = None
        if is_packed and max_batch_size == 0:
            # No sequences (batch_sizes all 0): nn.RNN returns empty data and hx's values, both
            # part of the autograd graph of the input and weights (zero gradients), so that a
            # backward through them works as there. The empty slices' sums are exact zeros.
            out_size = num_directions * (self.proj_size or self.hidden_size)
            anchor = sum(t.reshape(-1)[:0].sum() for t in (x, *self._flat_weights)
                         if t is not None).to(x.dtype)
            return (
                PackedSequence(x.new_zeros((0, out_size)) + anchor, batch_sizes,
                               sorted_indices, unsorted_indices),
                self.permute_hidden(hx + anchor, unsorted_indices),
            )
        if is_packed:
            # Packed (sorted) data -> padded (T, B, I) and per-sequence lengths.
            x, lengths = pad_packed_sequence(PackedSequence(x, batch_sizes))
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

        h_n = []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                suffix = "_reverse" if direction == 1 else ""
                weight_ih, weight_hh, bias_ih, bias_hh = (
                    _autocast(weights.get(f"{kind}_l{layer}{suffix}"), cast)
                    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                )
                out, h_last = elman_rnn(
                    layer_input, hx[layer * num_directions + direction], weight_ih, weight_hh,
                    bias_ih, bias_hh, nonlinearity, direction == 1, lengths,
                )
                outputs.append(out)
                h_n.append(h_last)
            layer_output = outputs[0] if num_directions == 1 else torch.cat(outputs, 2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_output = F.dropout(layer_output, self.dropout, training=True)
            layer_input = layer_output
        output = layer_input
        hidden = torch.stack(h_n)

        if is_packed:
            output = pack_padded_sequence(output, lengths).data
            return (
                PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                self.permute_hidden(hidden, unsorted_indices),
            )
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, hidden

    def _check_dtype_device(self, input: Tensor, hx: Tensor, weights: List[Tensor]) -> None:
        if hx.device != input.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and hidden tensor at {hx.device}"
            )
        for name, weight in zip(self._flat_weights_names, weights):
            # every parameter, as nn.RNN's kernels check (nn.RNN's TypeError for a missing one,
            # here naming it)
            if not isinstance(weight, Tensor):
                raise TypeError(f"RNN: parameter {name} must be a Tensor, got "
                                f"{type(weight).__name__}")
            if weight.device != input.device:
                raise RuntimeError(
                    "Input and parameter tensors are not at the same device, found input tensor "
                    f"at {input.device} and parameter tensor at {weight.device}"
                )
        if hx.dtype != input.dtype:
            raise RuntimeError(
                f"RNN hx dtype ({hx.dtype}) does not match input dtype ({input.dtype}). "
                f"Convert hx: hx.to({input.dtype})"
            )

    @classmethod
    def from_torch(cls, module: nn.RNN) -> "RNN":
        """An :class:`RNN` sharing ``module``'s parameters (the same ``Parameter`` objects),
        hooks, training mode, device and dtype; parametrizations are kept.

        Raises TypeError if ``module`` is not a ``torch.nn.RNN`` (or an :class:`RNN`), or is a
        subclass of one (its own ``forward`` and methods would be lost; :func:`convert_rnn`
        leaves such modules alone)."""
        _check_convertible(module, (nn.RNN, RNN), "torch.nn.RNN")
        return _retype(module, cls)

    def to_torch(self) -> nn.RNN:
        """A plain :class:`torch.nn.RNN` sharing this module's parameters, hooks and mode."""
        return _retype(self, nn.RNN)


# ---------------------------------------------------------------------------------------------
# RNNCell


class RNNCell(nn.RNNCell):
    r"""Elman RNN cell, a drop-in replacement for :class:`torch.nn.RNNCell` on the fused cell op.

    .. math:: h' = \phi(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})

    (PyTorch documentation, ``torch.nn.RNNCell``). Constructor
    ``RNNCell(input_size, hidden_size, bias=True, nonlinearity='tanh', device=None, dtype=None)``
    with the parameters, initialisation, ``repr`` and ``state_dict`` of ``nn.RNNCell`` (a
    subclass).

    Forward: ``forward(input, hx=None) -> h'``. input ``(B, I)`` or ``(I,)``; hx ``(B, H)`` or
    ``(H,)`` (zeros when omitted), the same floating dtype and device as input and weights;
    h' ``(B, H)`` or ``(H,)``. Under autocast, computed in the autocast dtype, as ``nn.RNNCell``.

    Raises (the same types and messages as ``nn.RNNCell``):
        ValueError: input or hx of rank other than 1 or 2.
        RuntimeError: input of the wrong width, hx of the wrong batch or width, an unknown
            nonlinearity, dtype or device mismatches.
    """

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        """One step; see the class docstring for shapes, dtypes and errors."""
        if input.dim() not in (1, 2):
            raise ValueError(
                f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead"
            )
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(
                input.size(0), self.hidden_size, dtype=input.dtype, device=input.device
            )
        elif not is_batched:
            hx = hx.unsqueeze(0)
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        # The checks of ATen's check_rnn_cell_forward_input / _hidden (same messages).
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected "
                f"{self.input_size}"
            )
        if input.size(0) != hx.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden0 batch size {hx.size(0)}"
            )
        if hx.size(1) != self.hidden_size:
            raise RuntimeError(
                f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, expected "
                f"{self.hidden_size}"
            )
        cast = _autocast_dtype(input.device.type)
        input, hx = _autocast(input, cast), _autocast(hx, cast)
        weight_ih, weight_hh = _autocast(self.weight_ih, cast), _autocast(self.weight_hh, cast)
        bias_ih, bias_hh = _autocast(self.bias_ih, cast), _autocast(self.bias_hh, cast)
        if input.dtype != weight_ih.dtype or hx.dtype != weight_ih.dtype:
            raise RuntimeError(
                f"RNNCell input dtype ({input.dtype}) and hx dtype ({hx.dtype}) must both "
                f"match the weight dtype ({weight_ih.dtype})"
            )
        if input.device != hx.device or input.device != weight_ih.device:
            raise RuntimeError(
                "Expected all tensors to be on the same device, found input at "
                f"{input.device}, hx at {hx.device} and weights at {weight_ih.device}"
            )
        ret = elman_cell(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, self.nonlinearity)
        if not is_batched:
            ret = ret.squeeze(0)
        return ret

    @classmethod
    def from_torch(cls, module: nn.RNNCell) -> "RNNCell":
        """An :class:`RNNCell` sharing ``module``'s parameters (the same ``Parameter`` objects),
        hooks, training mode, device and dtype. Raises TypeError for a module that is not an
        ``nn.RNNCell`` (or an :class:`RNNCell`), or is a subclass of one."""
        _check_convertible(module, (nn.RNNCell, RNNCell), "torch.nn.RNNCell")
        return _retype(module, cls)

    def to_torch(self) -> nn.RNNCell:
        """A plain :class:`torch.nn.RNNCell` sharing this module's parameters, hooks and mode."""
        return _retype(self, nn.RNNCell)


# ---------------------------------------------------------------------------------------------
# Whole-model conversion


def _convert_one(module: nn.Module) -> Optional[nn.Module]:
    base = _base_class(module)
    if base is nn.RNN:
        return RNN.from_torch(module)
    if base is nn.RNNCell:
        return RNNCell.from_torch(module)
    return None


def convert_rnn(model: nn.Module) -> nn.Module:
    """Swap, in place, every ``torch.nn.RNN`` and ``torch.nn.RNNCell`` inside ``model`` (at any
    depth) for :class:`RNN` / :class:`RNNCell`, and return ``model``.

    Only modules of exactly those classes (parametrized or not) are swapped: subclasses, which
    may override ``forward``, and modules that already are rnn_ext's are left alone. The new
    modules hold the same ``Parameter`` objects (an optimizer made before stays valid), the same
    device, dtype, training mode and hooks; a module reachable under several names is swapped
    for one shared new module. If ``model`` itself is an ``nn.RNN`` / ``nn.RNNCell`` the
    converted module is returned (``model`` is left unchanged).
    """
    converted = _convert_one(model)
    if converted is not None:
        return converted
    memo = {}
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in memo:
                memo[id(child)] = _convert_one(child)
            new = memo[id(child)]
            if new is not None:
                parent._modules[name] = new
    return model
