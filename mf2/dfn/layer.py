"""DFN's building blocks: the cell and the side network that stacks N of them beside one modality path."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.activations import ACT2FN


def default_layer_indices(num_qformer_layers: int, num_cells: int) -> list[int]:
    """`num_cells` Q-Former layers evenly spaced over `1..num_qformer_layers`, the last one always included.

    Indices refer to the Q-Former's `hidden_states` tuple, whose entry 0 is the embedding output. The last layer is
    always read because the task representation is taken from it; spreading the rest lets the side network see
    features of several depths (cross-attention sits in every other layer of the Q-Former).
    """
    if num_cells > num_qformer_layers:
        raise ValueError(
            f"DFN: {num_cells} cells but the Q-Former has only {num_qformer_layers} layers; lower `num_layers` or pass "
            "`layer_indices` explicitly."
        )
    return [math.ceil(num_qformer_layers * (cell + 1) / num_cells) for cell in range(num_cells)]


class DFNCell(nn.Module):
    """One DFN cell: `down (H -> r)`, activation, `up (r -> H)` (paper §III-B: two fully connected layers joined by
    an activation function)."""

    def __init__(self, hidden_size: int, bottleneck_size: int, activation: str = "relu"):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.activation = ACT2FN[activation]
        self.up = nn.Linear(bottleneck_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.up(self.activation(self.down(hidden_states)))


class DFNSideNetwork(nn.Module):
    """A ladder of N cells beside one modality path of one branch.

    The side stream `s` starts at zero; cell `i` reads the backbone's (pooled) hidden state of its Q-Former layer plus
    the stream so far and adds its output to the stream: `s_i = s_{i-1} + cell_i(h_{l_i} + s_{i-1})`. The side network
    returns the gated correction `gate_scaling * gate_activation(gate) * s_N` that is added to the branch's task
    representation. The gate is a learned per-channel vector.

    The backbone states arrive detached (the backbone is frozen and runs without a graph), so the backward pass only
    visits these few matrices: that is where DFN's training speed-up comes from.
    """

    def __init__(
        self,
        hidden_size: int,
        num_cells: int,
        bottleneck_size: int,
        activation: str = "relu",
        gate_activation: str = "sigmoid",
        gate_scaling: float = 0.1,
        gate_init: float = 0.0,
    ):
        super().__init__()
        self.cells = nn.ModuleList(DFNCell(hidden_size, bottleneck_size, activation) for _ in range(num_cells))
        self.gate = nn.Parameter(torch.full((hidden_size,), float(gate_init)))
        self.gate_activation = ACT2FN[gate_activation]
        self.gate_scaling = float(gate_scaling)
        self.gate_init = float(gate_init)

    @property
    def num_cells(self) -> int:
        return len(self.cells)

    @torch.no_grad()
    def reset_parameters(self, init_weights: bool = True) -> None:
        """PyTorch's default `nn.Linear` initialisation for every projection; with `init_weights` the up-projections
        are zeroed (as LoRA zeroes B), so the side output is exactly 0 and the adapted model equals the base model
        until the first update. The down-projections stay random so that the up-projections get a gradient at once."""
        for cell in self.cells:
            cell.down.reset_parameters()
            cell.up.reset_parameters()
            if init_weights:
                cell.up.weight.zero_()
                cell.up.bias.zero_()
        self.gate.fill_(self.gate_init)

    def forward(self, layer_states: torch.Tensor) -> torch.Tensor:
        """`layer_states` `(..., N, H)`: the backbone's states at the N read layers. Returns the correction `(..., H)`."""
        if layer_states.shape[-2] != self.num_cells:
            raise ValueError(
                f"DFN side network has {self.num_cells} cells but got {layer_states.shape[-2]} layer states."
            )
        layer_states = layer_states.to(self.gate.dtype)
        stream = torch.zeros_like(layer_states[..., 0, :])
        for index, cell in enumerate(self.cells):
            stream = stream + cell(layer_states[..., index, :] + stream)
        return self.gate_scaling * self.gate_activation(self.gate) * stream


__all__ = ["DFNCell", "DFNSideNetwork", "default_layer_indices"]
