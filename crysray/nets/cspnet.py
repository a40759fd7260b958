"""CSPNet-style message passing shared by the generative methods (docs/methods.md C4, C8.8).

Every crystal is a fully connected graph with self-loops. An edge (i, j) sees the Fourier
features of the fractional difference wrap(f_j - f_i), rotation-invariant lattice features of
its crystal (CrysBFN: the Gram matrix L L^T; KLDM: its 6 lattice numbers) and, for methods
with velocities (KLDM), a projection P (v_j - v_i) of the velocity difference. So the node
features are invariant to atom permutation (up to the same permutation), periodic translation,
a common velocity shift and rotation of the Cartesian frame. Method-specific embeddings and
output heads live in the method modules; this core maps node features to node features.

Cost: the first edge Linear([h_i, h_j, vec(LL^T), psi]) is split into per-node, per-crystal
and per-edge parts, and the per-edge projection of psi for all layers is one matmul per
forward pass. The velocity term is linear, P v_j - P v_i, so it joins the per-node parts
(``dst`` gets +P v_j, ``src`` gets -P v_i) and costs no per-edge work.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from crysray.types import segment_mean


def fully_connected_edges(
    num_atoms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ordered pairs (i, j), self-loops included, inside each crystal.

    Returns (src, dst, edge_crystal), each (E,) long with E = sum(n_b^2); edges are grouped by
    src, so every atom has exactly n_b consecutive edges.
    """
    device = num_atoms.device
    n_sq = num_atoms * num_atoms
    edge_crystal = torch.repeat_interleave(torch.arange(num_atoms.numel(), device=device), n_sq)
    atom_offset = torch.cumsum(num_atoms, 0) - num_atoms
    edge_offset = torch.cumsum(n_sq, 0) - n_sq
    k = torch.arange(int(n_sq.sum()), device=device) - edge_offset[edge_crystal]
    n = num_atoms[edge_crystal]
    src = atom_offset[edge_crystal] + torch.div(k, n, rounding_mode="floor")
    dst = atom_offset[edge_crystal] + k % n
    return src, dst, edge_crystal


def fourier_features(frac_diff: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """(E, 3) fractional differences -> (E, 6 * num_freqs) [sin(2 pi k d), cos(2 pi k d)]."""
    k = torch.arange(num_freqs, device=frac_diff.device, dtype=frac_diff.dtype)
    phase = 2.0 * math.pi * frac_diff.unsqueeze(-1) * k  # (E, 3, K)
    return torch.cat([phase.sin(), phase.cos()], dim=-1).flatten(1)


class EdgeNodeLayer(nn.Module):
    """One residual message-passing layer with pre-LayerNorm."""

    def __init__(self, hidden: int, lattice_dim: int = 9, velocity_dim: int = 0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.node_to_edge = nn.Linear(hidden, 2 * hidden)  # [W_src h_i + b, W_dst h_j]
        self.gram_to_edge = nn.Linear(lattice_dim, hidden, bias=False)  # lattice features
        if velocity_dim:
            self.velocity_to_edge = nn.Linear(velocity_dim, hidden, bias=False)
        self.edge_out = nn.Linear(hidden, hidden)
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )

    def forward(self, h, lattice_features, psi_proj, graph, velocities=None):
        h_norm = self.norm(h)
        src_part, dst_part = self.node_to_edge(h_norm).chunk(2, dim=-1)
        if velocities is not None:
            pv = self.velocity_to_edge(velocities)  # P (v_j - v_i) = (+P v_j) + (-P v_i)
            src_part, dst_part = src_part - pv, dst_part + pv
        pre = graph.combine(src_part, dst_part, self.gram_to_edge(lattice_features), psi_proj)
        edge = nn.functional.silu(self.edge_out(nn.functional.silu(pre)))  # (E, H)
        agg = graph.mean_over_neighbours(edge)
        return h + self.node_mlp(torch.cat([h_norm, agg], dim=-1))


class RaggedGraph:
    """Crystals of any sizes: per-edge gathers and a scatter-mean."""

    def __init__(self, num_atoms: torch.Tensor):
        self.src, self.dst, self.edge_crystal = fully_connected_edges(num_atoms)
        self.num_nodes = int(num_atoms.sum())

    def frac_diff(self, frac):
        return frac[self.dst] - frac[self.src]

    def combine(self, src_part, dst_part, crystal_part, edge_part):
        return src_part[self.src] + dst_part[self.dst] + crystal_part[self.edge_crystal] + edge_part

    def mean_over_neighbours(self, edge):
        return segment_mean(edge, self.src, self.num_nodes)


class UniformGraph:
    """All crystals have n atoms: the same edges as RaggedGraph (src-major order), computed
    with broadcasting instead of gathers, which is several times cheaper in memory traffic."""

    def __init__(self, num_crystals: int, n: int):
        self.b, self.n = num_crystals, n

    def frac_diff(self, frac):
        f = frac.view(self.b, self.n, 3)
        return (f.unsqueeze(1) - f.unsqueeze(2)).reshape(-1, 3)  # [b, i, j] = f_j - f_i

    def combine(self, src_part, dst_part, crystal_part, edge_part):
        b, n, hidden = self.b, self.n, src_part.shape[-1]
        pre = edge_part.reshape(b, n, n, hidden) + src_part.view(b, n, 1, hidden)
        pre = pre + (dst_part.view(b, 1, n, hidden) + crystal_part.view(b, 1, 1, hidden))
        return pre.view(-1, hidden)

    def mean_over_neighbours(self, edge):
        return edge.view(self.b, self.n, self.n, -1).mean(dim=2).view(self.b * self.n, -1)


def crystal_graph(num_atoms: torch.Tensor):
    n = int(num_atoms[0]) if num_atoms.numel() else 0
    if n > 0 and bool((num_atoms == n).all()):
        return UniformGraph(num_atoms.numel(), n)
    return RaggedGraph(num_atoms)


class CSPNet(nn.Module):
    """Node features (N, H) + fractional coords + lattice features [+ velocities] -> (N, H)."""

    def __init__(
        self,
        hidden: int,
        num_layers: int,
        num_freqs: int,
        lattice_dim: int = 9,
        velocity_dim: int = 0,
    ):
        super().__init__()
        self.num_freqs = num_freqs
        self.velocity_dim = velocity_dim
        self.layers = nn.ModuleList(
            EdgeNodeLayer(hidden, lattice_dim, velocity_dim) for _ in range(num_layers)
        )
        # per-edge part of every layer's first edge Linear, applied in one matmul
        self.psi_to_edges = nn.Linear(6 * num_freqs, hidden * num_layers, bias=False)
        self.final_norm = nn.LayerNorm(hidden)

    def forward(self, h, frac_coords, lattice_features, num_atoms, velocities=None):
        """h (N, H); frac_coords (N, 3) any real (periodic); lattice_features (B, lattice_dim),
        rotation invariant (``lattice_gram``); num_atoms (B,); velocities (N, velocity_dim) for a
        backbone built with velocity_dim > 0, else None."""
        if (velocities is None) != (self.velocity_dim == 0):
            raise ValueError(f"backbone built with velocity_dim={self.velocity_dim}")
        graph = crystal_graph(num_atoms)
        diff = graph.frac_diff(frac_coords)
        diff = diff - torch.round(diff)  # minimum image in fractional units
        psi = fourier_features(diff.detach(), self.num_freqs)
        psi_proj = self.psi_to_edges(psi).chunk(len(self.layers), dim=-1)
        for layer, proj in zip(self.layers, psi_proj):
            h = layer(h, lattice_features, proj, graph, velocities)
        return self.final_norm(h)


def lattice_gram(lattice: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> (B, 9) L L^T, invariant to rotations of the Cartesian frame."""
    return (lattice @ lattice.transpose(1, 2)).flatten(1)


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) [sin(s t f_k), cos(s t f_k)], f_k = 1e4^(-k/(dim/2-1))."""
    half = dim // 2
    freqs = torch.exp(-math.log(1e4) * torch.arange(half, device=t.device) / (half - 1))
    arg = (scale * t.float()).unsqueeze(-1) * freqs
    return torch.cat([arg.sin(), arg.cos()], dim=-1)
