"""Batched relaxation of many crystals at once: FIRE with cell relaxation, written in torch.

The algorithm is ASE's ``FIRE`` acting on ASE's ``FrechetCellFilter`` (what matgl's
``Relaxer`` runs), vectorised over crystals. Every crystal keeps its own FIRE state (velocity,
time step, mixing ``alpha``, count of downhill steps) and its own convergence test, so the
trajectories match the one-at-a-time ``Relaxer`` up to float32 noise in the model.

Degrees of freedom of one crystal with n atoms (FrechetCellFilter):

* ``r0`` (n, 3): positions in the undeformed starting cell, A; ``r = r0 @ F^T``;
* ``X`` (3, 3): ``c * logm(F)`` with F the deformation gradient (``cell = cell0 @ F^T``) and
  ``c = n`` (ASE's ``exp_cell_factor``).

Generalised forces: ``f_r0 = f @ F`` on the atoms and ``dE/dX`` on the cell, the adjoint
Frechet derivative of ``expm`` applied to ``virial @ F^-T`` and divided by c (virial
``= -V * stress``). A crystal converges when every row of the (n + 3, 3) force array is
shorter than ``fmax`` (eV/A), exactly ASE's test: for the cell rows this means
``|V * stress| / n < fmax``.

Each crystal stops on its own; freed batch slots are refilled from the queue, so the batch
stays full. Statuses: "converged", "not_converged" (step limit), "nan" (non-finite input or
model output), "exploded" (volume changed by more than ``MAX_VOLUME_RATIO``, the cell became
too dense for a neighbour list, or the energy fell below ``MIN_ENERGY_PER_ATOM``),
"unsupported_element" (the model has no embedding for an element).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from crysray.filter.config import FunnelConfig
from crysray.filter.graphs import evaluate, node_types
from crysray.structures import wrap_frac

MAX_VOLUME_RATIO = 5.0  # relaxed / initial volume outside [1/5, 5]: the cell ran away
MIN_ENERGY_PER_ATOM = -30.0  # eV/atom; M3GNet-MP energies are -1..-13: below this a PES hole


@dataclass(frozen=True)
class Fire:
    """ASE FIRE defaults (ase.optimize.FIRE); ``maxstep`` caps the step norm of a crystal."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


@dataclass(frozen=True)
class RelaxResult:
    """Final state of B relaxed crystals, in input order."""

    lattice: np.ndarray  # (B, 3, 3) float64, A
    frac_coords: list[np.ndarray]  # B arrays (n_b, 3), wrapped into [0, 1)
    energy: np.ndarray  # (B,) float64, eV per cell at the final geometry (NaN if failed)
    steps: np.ndarray  # (B,) int64, FIRE steps taken
    fmax: np.ndarray  # (B,) float64, largest generalised force row at the end, eV/A
    status: list[str]  # B statuses (module docstring)


class _Crystals:
    """FIRE state of all B crystals (float64, CPU); atoms concatenated in crystal order."""

    def __init__(self, lattices, fracs, numbers, potential, fire: Fire):
        self.n = torch.tensor([len(z) for z in numbers], dtype=torch.long)
        self.batch_idx = torch.repeat_interleave(torch.arange(len(self.n)), self.n)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.n.cumsum(0)])
        self.cell0 = torch.as_tensor(np.asarray(lattices, dtype=np.float64)).reshape(-1, 3, 3)
        frac = torch.as_tensor(np.concatenate([np.reshape(f, (-1, 3)) for f in fracs]))
        self.types = [node_types(potential, np.asarray(z)) for z in numbers]
        self.status = ["" for _ in numbers]
        self._reject_unusable(frac)
        safe_cell0 = torch.where(torch.isfinite(self.cell0), self.cell0, 0.0)
        self.r0 = torch.bmm(frac.double().unsqueeze(1), safe_cell0[self.batch_idx]).squeeze(1)
        self.inv_cell0 = torch.linalg.pinv(safe_cell0)
        self.x = torch.zeros_like(self.cell0)  # c * logm(F); F = I at the start
        self.v_atoms, self.v_cell = torch.zeros_like(self.r0), torch.zeros_like(self.cell0)
        b = len(self.n)
        self.dt = torch.full((b,), fire.dt, dtype=torch.float64)
        self.alpha = torch.full((b,), fire.astart, dtype=torch.float64)
        self.downhill = torch.zeros(b, dtype=torch.long)
        self.steps = torch.zeros(b, dtype=torch.long)
        self.energy = torch.full((b,), float("nan"), dtype=torch.float64)
        self.fmax = torch.full((b,), float("nan"), dtype=torch.float64)
        self.volume0 = torch.linalg.det(safe_cell0).abs()

    def _reject_unusable(self, frac: torch.Tensor) -> None:
        finite_atoms = torch.isfinite(frac).all(1)
        for b in range(len(self.n)):
            atoms = slice(int(self.offsets[b]), int(self.offsets[b + 1]))
            if not (torch.isfinite(self.cell0[b]).all() and finite_atoms[atoms].all()):
                self.status[b] = "nan"
            elif self.types[b] is None:
                self.status[b] = "unsupported_element"

    def atoms_of(self, crystals: torch.Tensor) -> torch.Tensor:
        """Atom indices of ``crystals`` (sorted), in order."""
        return torch.cat(
            [torch.arange(int(self.offsets[c]), int(self.offsets[c + 1])) for c in crystals]
        )

    def deformation(self, crystals: torch.Tensor) -> torch.Tensor:
        """(b, 3, 3) deformation gradients F = expm(X / c)."""
        return torch.linalg.matrix_exp(self.x[crystals] / self.n[crystals, None, None].double())


def relax_batch(
    potential,
    lattices,
    fracs,
    numbers,
    *,
    fmax: float = FunnelConfig.fmax,
    relax_steps: int = FunnelConfig.relax_steps,
    relax_cell: bool = True,
    max_atoms_per_batch: int = FunnelConfig.max_atoms_per_batch,
    fire: Fire = Fire(),
    on_settled=None,
) -> RelaxResult:
    """Relax B crystals together, ``max_atoms_per_batch`` atoms per model call; never raises
    on a bad crystal (its status says what happened).

    Args:
        potential: matgl ``Potential`` in eval mode (``load_potential``).
        lattices: (B, 3, 3) rows are lattice vectors, A.
        fracs: B arrays (n_b, 3) of fractional coordinates.
        numbers: B arrays (n_b,) of atomic numbers Z.
        fmax: convergence threshold on atoms and (with ``relax_cell``) cell rows, eV/A.
        relax_steps: FIRE steps per crystal before it is "not_converged".
        relax_cell: relax the lattice too (FrechetCellFilter) or only the positions.
        on_settled: called with the number of crystals that finished (converged, not
            converged or failed) after each model call, for progress within a long batch.
    """
    state = _Crystals(lattices, fracs, numbers, potential, fire)
    queue = deque(b for b, s in enumerate(state.status) if not s)
    if on_settled is not None:
        on_settled(len(state.status) - len(queue))  # refused before any model call
    active: list[int] = []
    while queue or active:
        active = _refill(active, queue, state.n, max_atoms_per_batch)
        crystals = torch.tensor(sorted(active), dtype=torch.long)
        running = _step(potential, state, crystals, fmax, relax_steps, relax_cell, fire)
        active = [int(c) for c in crystals[running]]
        if on_settled is not None:
            on_settled(len(crystals) - len(active))
    return _result(state)


def _refill(active: list[int], queue: deque, n: torch.Tensor, max_atoms: int) -> list[int]:
    """Top up the running crystals from the queue while the batch has room (at least one)."""
    total = int(n[active].sum()) if active else 0
    while queue and (not active or total + int(n[queue[0]]) <= max_atoms):
        total += int(n[queue[0]])
        active.append(queue.popleft())
    return active


def _step(
    potential, state: _Crystals, crystals, fmax, relax_steps, relax_cell, fire
) -> torch.Tensor:
    """Evaluate ``crystals``, settle the finished ones, move the rest; (b,) True = keeps going."""
    atoms = state.atoms_of(crystals)
    local = torch.repeat_interleave(torch.arange(len(crystals)), state.n[crystals])
    deform = state.deformation(crystals)
    cells = torch.bmm(state.cell0[crystals], deform.transpose(1, 2))
    frac = torch.bmm(state.r0[atoms].unsqueeze(1), state.inv_cell0[crystals][local]).squeeze(1)
    fracs = [f.numpy() for f in torch.split(frac, state.n[crystals].tolist())]
    ev = evaluate(potential, cells, fracs, [state.types[c] for c in crystals])
    f_atoms, f_cell = _generalised_forces(state, crystals, local, deform, cells, ev, relax_cell)
    row_norms = torch.zeros(len(crystals), dtype=torch.float64).scatter_reduce_(
        0, local, f_atoms.norm(dim=1), reduce="amax", include_self=False
    )
    worst = torch.maximum(row_norms, f_cell.norm(dim=2).amax(dim=1))
    state.energy[crystals], state.fmax[crystals] = ev.energy, worst
    status = _classify(state, crystals, cells, ev, worst, fmax, relax_steps)
    for i, c in enumerate(crystals.tolist()):
        state.status[c] = status[i]
    running = torch.tensor([s == "" for s in status], dtype=torch.bool)
    if running.any():
        _fire_update(state, crystals[running], f_atoms[running[local]], f_cell[running], fire)
    return running


def _generalised_forces(state, crystals, local, deform, cells, ev, relax_cell):
    """Forces on (r0, X): (n_atoms, 3) and (b, 3, 3); zero rows where the model failed."""
    ok_atoms = ev.ok[local]
    forces = torch.where(ok_atoms[:, None], ev.forces, 0.0)
    f_atoms = torch.bmm(forces.unsqueeze(1), deform[local]).squeeze(1)  # f @ F
    if not relax_cell:
        return f_atoms, torch.zeros_like(deform)
    volume = torch.linalg.det(cells).abs()
    stress = torch.where(ev.ok[:, None, None], ev.stress, 0.0)
    virial = -volume[:, None, None] * stress
    ucf_grad = virial @ torch.linalg.inv(deform.transpose(1, 2))
    c = state.n[crystals].double()[:, None, None]
    log_deform = state.x[crystals] / c
    return f_atoms, _expm_frechet_adjoint(log_deform, ucf_grad) / c


def _expm_frechet_adjoint(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(b, 3, 3) ``L_exp(A)^*[G]``: entry (m, n) is ``sum(L_exp(A)[E_mn] * G)``.

    The adjoint of the Frechet derivative of expm at A is the derivative at A^T, which is the
    upper-right block of ``expm([[A^T, G], [0, A^T]])`` (Higham, Functions of Matrices, 3.2).
    """
    b = a.shape[0]
    block = a.new_zeros((b, 6, 6))
    block[:, :3, :3] = block[:, 3:, 3:] = a.transpose(1, 2)
    block[:, :3, 3:] = g
    return torch.linalg.matrix_exp(block)[:, :3, 3:]


def _classify(state, crystals, cells, ev, worst, fmax, relax_steps) -> list[str]:
    """ "" for crystals that keep going, else their final status."""
    volume_ratio = torch.linalg.det(cells).abs() / state.volume0[crystals]
    energy_per_atom = ev.energy / state.n[crystals]
    out = []
    for i, c in enumerate(crystals.tolist()):
        runaway = not (1 / MAX_VOLUME_RATIO <= float(volume_ratio[i]) <= MAX_VOLUME_RATIO)
        if bool(ev.too_dense[i]) or runaway:
            out.append("exploded")
        elif not bool(ev.ok[i]):
            out.append("nan")
        elif float(energy_per_atom[i]) < MIN_ENERGY_PER_ATOM:
            out.append("exploded")
        elif float(worst[i]) < fmax:
            out.append("converged")
        elif int(state.steps[c]) >= relax_steps:
            out.append("not_converged")
        else:
            out.append("")
    return out


def _fire_update(state: _Crystals, crystals, f_atoms, f_cell, fire: Fire) -> None:
    """One FIRE step (ase.optimize.FIRE.step) for each of ``crystals``, vectorised."""
    atoms = state.atoms_of(crystals)
    local = torch.repeat_interleave(torch.arange(len(crystals)), state.n[crystals])
    v_atoms, v_cell = state.v_atoms[atoms], state.v_cell[crystals]

    def per_crystal(u_atoms, u_cell, w_atoms, w_cell):  # sum of u . w over the crystal's rows
        dots = torch.zeros(len(crystals), dtype=torch.float64).index_add_(
            0, local, (u_atoms * w_atoms).sum(1)
        )
        return dots + (u_cell * w_cell).sum((1, 2))

    first = state.steps[crystals] == 0  # ASE starts from v = 0 without the mixing test
    vf = per_crystal(f_atoms, f_cell, v_atoms, v_cell)
    downhill = (vf > 0) & ~first
    uphill = (vf <= 0) & ~first
    scale = torch.sqrt(per_crystal(v_atoms, v_cell, v_atoms, v_cell)) / torch.sqrt(
        per_crystal(f_atoms, f_cell, f_atoms, f_cell)
    ).clamp_min(1e-300)
    alpha = state.alpha[crystals]
    mix_v = torch.where(downhill, 1 - alpha, 1.0) * torch.where(uphill, 0.0, 1.0)
    mix_f = torch.where(downhill, alpha * scale, 0.0)
    v_atoms = mix_v[local, None] * v_atoms + mix_f[local, None] * f_atoms
    v_cell = mix_v[:, None, None] * v_cell + mix_f[:, None, None] * f_cell
    _update_timestep(state, crystals, downhill, uphill, fire)
    dt = state.dt[crystals]
    v_atoms, v_cell = v_atoms + dt[local, None] * f_atoms, v_cell + dt[:, None, None] * f_cell
    dr_atoms, dr_cell = dt[local, None] * v_atoms, dt[:, None, None] * v_cell
    norm = torch.sqrt(per_crystal(dr_atoms, dr_cell, dr_atoms, dr_cell))
    shrink = torch.where(norm > fire.maxstep, fire.maxstep / norm.clamp_min(1e-300), 1.0)
    state.r0[atoms] += shrink[local, None] * dr_atoms
    state.x[crystals] += shrink[:, None, None] * dr_cell
    state.v_atoms[atoms], state.v_cell[crystals] = v_atoms, v_cell
    state.steps[crystals] += 1


def _update_timestep(state, crystals, downhill, uphill, fire: Fire) -> None:
    grow = downhill & (state.downhill[crystals] > fire.nmin)
    dt, alpha = state.dt[crystals], state.alpha[crystals]
    dt = torch.where(grow, torch.clamp(dt * fire.finc, max=fire.dtmax), dt)
    dt = torch.where(uphill, dt * fire.fdec, dt)
    alpha = torch.where(grow, alpha * fire.fa, torch.where(uphill, fire.astart, alpha))
    count = torch.where(uphill, 0, state.downhill[crystals] + downhill.long())
    state.dt[crystals], state.alpha[crystals], state.downhill[crystals] = dt, alpha, count


def _result(state: _Crystals) -> RelaxResult:
    everyone = torch.arange(len(state.n))
    deform = state.deformation(everyone)
    cells = torch.bmm(state.cell0, deform.transpose(1, 2))
    frac = (state.r0.unsqueeze(1) @ state.inv_cell0[state.batch_idx]).squeeze(1).numpy()
    counts = state.n.tolist()
    return RelaxResult(
        lattice=cells.numpy(),
        frac_coords=[wrap_frac(f) for f in np.split(frac, np.cumsum(counts)[:-1])],
        energy=state.energy.numpy().copy(),
        steps=state.steps.numpy().copy(),
        fmax=state.fmax.numpy().copy(),
        status=list(state.status),
    )
