"""Many crystals as one batched MatGL graph: energies, forces and stresses in one call.

Crystals are given as plain arrays (the Parquet rows of crysray.sample.schema), never as
pymatgen Structures. The graph of each crystal is built as ``matgl.ext.pymatgen.Structure2Graph``
builds it (pymatgen's ``find_points_in_spheres`` with the model cutoff, self-pairs dropped), so
a batched call gives the same numbers as matgl's ASE calculator, crystal by crystal.

Units: lattice rows are lattice vectors in A, energies in eV per cell, forces in eV/A, stresses
in eV/A^3 with the ASE sign convention (``stress = dE/d(strain) / V``; negative when the cell
wants to expand). Note that ``Potential`` itself returns stresses in GPa.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from matgl.utils.constants import EV_PER_ANG3_TO_GPA
from pymatgen.optimization.neighbors import find_points_in_spheres
from torch_geometric.data import Batch, Data

from crysray.filter.config import FunnelConfig

SELF_PAIR_TOL = 1e-8  # A; as matgl's converters: a zero-length "bond" to itself is dropped
MIN_VOLUME_PER_ATOM = 1.0  # A^3; below this the neighbour list would explode (real: > 5)
MAX_EDGES_PER_ATOM = 600  # dense metals have ~80 neighbours within 5 A


@dataclass(frozen=True)
class Evaluation:
    """Model outputs for crystals ``0..B-1`` of one call; NaN rows where ``ok`` is False."""

    energy: torch.Tensor  # (B,) float64, eV per cell
    forces: torch.Tensor  # (N, 3) float64, eV/A
    stress: torch.Tensor  # (B, 3, 3) float64, eV/A^3, symmetric
    ok: torch.Tensor  # (B,) bool: graph built and every output finite
    too_dense: torch.Tensor  # (B,) bool: skipped because the neighbour list would explode


def node_types(potential, numbers: np.ndarray) -> np.ndarray | None:
    """(n,) indices into the model's element list, or None if an element is not covered."""
    lookup = {symbol: i for i, symbol in enumerate(potential.model.element_types)}
    from pymatgen.core import Element

    try:
        return np.array([lookup[Element.from_Z(int(z)).symbol] for z in numbers], dtype=np.int64)
    except (KeyError, ValueError):
        return None


def crystal_graph(cell: np.ndarray, frac: np.ndarray, types: np.ndarray, cutoff: float):
    """PyG graph of one crystal as matgl builds it, or None if it would be too dense.

    Args:
        cell: (3, 3) float64 lattice, rows are vectors, A.
        frac: (n, 3) fractional coordinates (any range).
        types: (n,) indices into the model's element list.
        cutoff: neighbour cutoff, A.
    """
    n = len(types)
    volume = abs(np.linalg.det(cell))
    if not volume >= MIN_VOLUME_PER_ATOM * n:  # also catches NaN
        return None
    cart = np.ascontiguousarray(frac @ cell)
    src, dst, images, dist = find_points_in_spheres(
        cart,
        cart,
        r=cutoff,
        pbc=np.ones(3, dtype=np.int64),
        lattice=np.ascontiguousarray(cell),
        tol=SELF_PAIR_TOL,
    )
    keep = (src != dst) | (dist > SELF_PAIR_TOL)
    if keep.sum() > MAX_EDGES_PER_ATOM * n:
        return None
    graph = Data(num_nodes=n, edge_index=torch.from_numpy(np.stack([src[keep], dst[keep]])).int())
    graph.pbc_offset = torch.from_numpy(images[keep]).float()
    graph.node_type = torch.from_numpy(types)
    graph.frac_coords = torch.from_numpy(frac).float()
    return graph


def evaluate(
    potential,
    cells: torch.Tensor,
    fracs: list[np.ndarray],
    types: list[np.ndarray],
    *,
    with_forces: bool = True,
) -> Evaluation:
    """Energies (and forces, stresses) of B crystals in one batched model call.

    Args:
        potential: a matgl ``Potential`` in eval mode.
        cells: (B, 3, 3) float64 lattices, A.
        fracs: B arrays (n_b, 3) of fractional coordinates.
        types: B arrays (n_b,) of node types (``node_types``).
        with_forces: False skips autograd (energies only; forces and stress are NaN).
    """
    b, counts = len(fracs), [len(t) for t in types]
    cutoff = float(potential.model.cutoff)
    cells_np = cells.detach().cpu().numpy()
    graphs = [crystal_graph(cells_np[i], fracs[i], types[i], cutoff) for i in range(b)]
    built = torch.tensor([g is not None for g in graphs], dtype=torch.bool)
    energy = torch.full((b,), float("nan"), dtype=torch.float64)
    forces = torch.full((sum(counts), 3), float("nan"), dtype=torch.float64)
    stress = torch.full((b, 3, 3), float("nan"), dtype=torch.float64)
    keep = built.nonzero().flatten().tolist()
    groups, results = [], []
    if keep:
        try:
            results = [_run_model(potential, [graphs[i] for i in keep], cells[keep], with_forces)]
            groups = [keep]
        except RuntimeError:  # e.g. out of memory, or a graph the model cannot digest
            groups, results = _one_by_one(potential, graphs, cells, keep, with_forces)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for group, (e, f, s) in zip(groups, results):
        energy[group], stress[group] = e, s
        forces[np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in group])] = f
    ok = built & torch.isfinite(energy)
    if with_forces:
        ok &= torch.isfinite(stress).flatten(1).all(1) & _segment_all_finite(forces, counts)
    return Evaluation(energy, forces, stress, ok, ~built)


def _one_by_one(potential, graphs, cells, keep, with_forces):
    """Crystal by crystal; a crystal whose call raises keeps NaN outputs."""
    groups, results = [], []
    for i in keep:
        try:
            results.append(_run_model(potential, [graphs[i]], cells[[i]], with_forces))
            groups.append([i])
        except RuntimeError:
            continue
    return groups, results


def _run_model(potential, graphs: list[Data], cells: torch.Tensor, with_forces: bool):
    device = next(potential.parameters()).device
    batch = Batch.from_data_list(graphs).to(device)
    lat = cells.to(device=device, dtype=torch.float32)
    if with_forces:
        with torch.enable_grad():
            e, f, s, _ = potential(batch, lat)[:4]
        s = s.detach().reshape(-1, 3, 3).double() / EV_PER_ANG3_TO_GPA  # GPa -> eV/A^3
        s = 0.5 * (s + s.transpose(1, 2))  # ASE keeps the Voigt (symmetric) part only
        return e.detach().double().cpu(), f.detach().double().cpu(), s.cpu()
    e = _energy_only(potential)(batch, lat)[0]
    nan_f = torch.full((batch.num_nodes, 3), float("nan"), dtype=torch.float64)
    nan_s = torch.full((len(graphs), 3, 3), float("nan"), dtype=torch.float64)
    return e.detach().double().cpu(), nan_f, nan_s


def _energy_only(potential):
    """A shallow copy sharing the weights, with the autograd outputs switched off."""
    quiet = copy.copy(potential)
    quiet.calc_forces = quiet.calc_stresses = quiet.calc_hessian = False
    return quiet


def _segment_all_finite(values: torch.Tensor, counts: list[int]) -> torch.Tensor:
    finite_rows = torch.isfinite(values).all(dim=1)
    return (
        torch.stack([chunk.all() for chunk in finite_rows.split(counts)]) if counts else finite_rows
    )


def single_point_energies(
    potential,
    lattices: np.ndarray,
    fracs: list[np.ndarray],
    numbers: list[np.ndarray],
    *,
    max_atoms_per_batch: int = FunnelConfig.max_atoms_per_batch,
) -> np.ndarray:
    """(B,) total energies in eV of crystals as given (no relaxation); NaN where it fails.

    Crystals are evaluated in batches of at most ``max_atoms_per_batch`` atoms. A crystal with
    an element the model does not cover, a degenerate cell or a non-finite result gets NaN.

    Args:
        lattices: (B, 3, 3) float64, rows are lattice vectors, A.
        fracs: B arrays (n_b, 3) of fractional coordinates.
        numbers: B arrays (n_b,) of atomic numbers Z.
    """
    out = np.full(len(fracs), np.nan)
    types = [node_types(potential, z) for z in numbers]
    usable = [
        i
        for i, t in enumerate(types)
        if t is not None and np.isfinite(lattices[i]).all() and np.isfinite(fracs[i]).all()
    ]
    for chunk in chunk_by_atoms(usable, [len(fracs[i]) for i in usable], max_atoms_per_batch):
        cells = torch.from_numpy(np.asarray(lattices, dtype=np.float64)[chunk])
        ev = evaluate(
            potential,
            cells,
            [np.asarray(fracs[i], dtype=np.float64) for i in chunk],
            [types[i] for i in chunk],
            with_forces=False,
        )
        out[chunk] = np.where(ev.ok.numpy(), ev.energy.numpy(), np.nan)
    return out


def chunk_by_atoms(indices: list[int], sizes: list[int], max_atoms: int) -> list[list[int]]:
    """Consecutive groups of ``indices`` whose summed ``sizes`` stay within ``max_atoms``."""
    chunks, current, total = [], [], 0
    for i, n in zip(indices, sizes):
        if current and total + n > max_atoms:
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    return chunks + ([current] if current else [])
