"""Controlled experiments behind the "tight CSP structures" fix (results/csp_diagnosis.json).

All runs: one torch thread, the first 500 Perov-5 test crystals, sampling seed 0, one sample
per crystal, matching in one process. Subcommands:

    sampler   the shipped checkpoint under alternative samplers / last-step choices and the
              error split into lattice and coordinates (no training)
    probe     teacher-forced errors of x_hat and L_hat at each step on training crystals
    handoff   inputs of the first k steps drawn around the truth, the sampler takes over after

Fine-tuning runs (a checkpoint continued for a few minutes under a modified loss, then
``sampler`` on it) are launched by benchmarks/csp_diagnosis.sh.

    python benchmarks/csp_diagnosis.py sampler --checkpoint checkpoints/crysbfn_perov5.pt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crysray.data.csv import dataset_path, load_split
from crysray.eval.csp import match_rate_rmse
from crysray.methods.flows import bayesian_update
from crysray.methods.torus import angle_to_frac, frac_to_angle, wrap
from crysray.sample.compositions import table_compositions
from crysray.sample.sampler import composition_batch
from crysray.structures import arrays_to_structure
from crysray.train.checkpoint import load_model
from crysray.types import CrystalBatch

OUT = REPO / "benchmarks" / "results" / "csp_diagnosis.json"


def test_subset(n: int = 500):
    return load_split(dataset_path("perov_5", "test")).subset(range(n))


def to_structures(batch: CrystalBatch) -> list:
    out = []
    for b in batch.split():
        out.append(
            arrays_to_structure(
                b.lattice[0].double().numpy(), b.frac_coords.double().numpy(), b.atom_types.numpy()
            )
        )
    return out


def score(batch: CrystalBatch, table) -> dict:
    m = match_rate_rmse([[s] for s in to_structures(batch)], table.structures(), workers=1)
    return {
        k: (round(v, 4) if isinstance(v, float) else v)
        for k, v in m.items()
        if k not in ("match_rate_at_k", "rmse_at_k", "k")
    }


@torch.no_grad()
def sample_variant(
    model,
    spec,
    steps,
    generator,
    mode="end_back",
    seed=0,
    truth=None,
    handoff=0,
    handoff_parts=("coords", "lattice"),
):
    """End-back (as shipped) or the sequential BFN update ("vanilla", docs C2) sampler.

    With ``truth`` and ``handoff`` = k, the inputs of steps 2..k are drawn around the true
    structure (as in training; only the ``handoff_parts`` of it) and the sampler takes over.
    """
    flow, lat_flow = model.coord_flow, model.lattice_flow
    alphas, _, bank = flow.tables(steps)
    n_atoms, n_crystals = int(spec.num_atoms.sum()), spec.num_atoms.numel()
    m, c = bank.draw(torch.zeros((n_atoms, 3)), torch.zeros(1, dtype=torch.long), generator)
    u = torch.zeros_like(c)
    lattice_in = torch.zeros((n_crystals, 3, 3))
    rho = torch.ones(())
    rng = np.random.default_rng(seed)
    s1 = lat_flow.sigma1
    for i in range(1, steps + 1):
        t = torch.full((n_crystals,), (i - 1) / steps)
        x_hat, lat_hat, _ = model.denoiser(spec.atom_types, m, u, t, lattice_in, spec.num_atoms)
        if i == steps:
            break
        if mode == "end_back":
            index = torch.full((1,), i, dtype=torch.long)
            centre, lat_centre = x_hat, lat_hat
            if i < handoff and "coords" in handoff_parts:
                centre = frac_to_angle(truth.frac_coords)
            if i < handoff and "lattice" in handoff_parts:
                lat_centre = truth.lattice / model.lattice_std
            m, c = bank.draw(centre, index, generator)
            u = flow.entropy_condition(c, index)
            lattice_in = lat_flow.draw(lat_centre, torch.tensor(i / steps), generator)
        else:
            a = float(alphas[i - 1])
            y = torch.from_numpy(rng.vonmises(x_hat.double().numpy(), a)).float()
            m, c = bayesian_update(m, c, y, a)
            u = flow.entropy_condition(c, torch.full((1,), i))
            a_lat = s1 ** (-2 * i / steps) * (1 - s1 ** (2 / steps))
            y_lat = lat_hat + torch.randn(lat_hat.shape, generator=generator) / math.sqrt(a_lat)
            lattice_in = (rho * lattice_in + a_lat * y_lat) / (rho + a_lat)
            rho = rho + a_lat
    return CrystalBatch(
        angle_to_frac(x_hat), lat_hat * model.lattice_std, spec.atom_types, spec.num_atoms
    )


def cmd_handoff(args) -> dict:
    """Where do sampled trajectories go wrong: start the sampler from truth-centred inputs."""
    model = load_model(args.checkpoint)
    table = test_subset(args.n)
    spec = composition_batch(table_compositions(table))
    truth = next(table.iterate_batches(len(table), shuffle=False))
    results = []
    for steps in args.steps:
        ks = sorted({1, 2, steps // 4 + 1, steps // 2 + 1, 3 * steps // 4 + 1})
        for parts in args.parts:
            for k in ks if parts == "coords+lattice" else [2, 3]:
                out = sample_variant(
                    model,
                    spec,
                    steps,
                    torch.Generator().manual_seed(0),
                    truth=truth,
                    handoff=k,
                    handoff_parts=parts.split("+"),
                )
                row = {
                    "steps": steps,
                    "truth_centred": parts,
                    "sampler_from_step": k,
                    **score(out, table),
                }
                print(json.dumps(row), flush=True)
                results.append(row)
    return {"checkpoint": args.checkpoint, "n": args.n, "runs": results}


def cmd_sampler(args) -> dict:
    model = load_model(args.checkpoint)
    table = test_subset(args.n)
    spec = composition_batch(table_compositions(table))
    truth = next(table.iterate_batches(len(table), shuffle=False))
    results = []
    for steps in args.steps:
        for mode in ("end_back",) if args.quick else ("end_back", "vanilla"):
            start = time.perf_counter()
            out = sample_variant(model, spec, steps, torch.Generator().manual_seed(0), mode)
            seconds = time.perf_counter() - start
            row = {
                "steps": steps,
                "sampler": mode,
                "seconds": round(seconds, 2),
                **score(out, table),
            }
            if mode == "end_back" and not args.quick:
                # which half of the output is loose: swap in the true lattice or true coordinates
                row["with_true_lattice"] = score(out.replace(lattice=truth.lattice.float()), table)
                row["with_true_coords"] = score(
                    out.replace(frac_coords=truth.frac_coords.float()), table
                )
            print(json.dumps(row), flush=True)
            results.append(row)
    return {"checkpoint": args.checkpoint, "n": args.n, "runs": results}


@torch.no_grad()
def probe(model, batch, steps_list=(10, 50, 200), seed=0) -> list:
    """Teacher-forced errors at step i: theta_{i-1} drawn around the truth, as in training.

    Coordinate errors are in radians after removing each crystal's mean shift (a global
    translation is not an error for CSP); lattice errors in normalised units.
    """
    g = torch.Generator().manual_seed(seed)
    x = frac_to_angle(batch.frac_coords)
    bidx = batch.batch_idx
    lat = batch.lattice / model.lattice_std
    rows = []

    def centred_rms(d):
        shift = torch.atan2(
            *(_segment_mean(f(d), bidx, batch.num_crystals) for f in (torch.sin, torch.cos))
        )
        return wrap(d - shift[bidx]).pow(2).mean().sqrt().item()

    for steps in steps_list:
        _, _, bank = model.coord_flow.tables(steps)
        for i in sorted({1, 2, max(1, steps // 4), steps // 2, 3 * steps // 4, steps - 1, steps}):
            upd = torch.full((batch.num_crystals, 1), i - 1)
            m, c = bank.draw(x, upd[bidx], g)
            u = model.coord_flow.entropy_condition(c, upd[bidx])
            t = torch.full((batch.num_crystals,), (i - 1) / steps)
            lat_in = model.lattice_flow.draw(lat, t.view(-1, 1, 1), g)
            x_hat, lat_hat, _ = model.denoiser(batch.atom_types, m, u, t, lat_in, batch.num_atoms)
            rows.append(
                {
                    "steps": steps,
                    "i": i,
                    "input_rms": round(centred_rms(wrap(m - x)), 5),
                    "x_hat_rms": round(centred_rms(wrap(x_hat - x)), 5),
                    "lattice_in_rms": round((lat_in - lat).pow(2).mean().sqrt().item(), 5),
                    "lattice_hat_rms": round((lat_hat - lat).pow(2).mean().sqrt().item(), 5),
                }
            )
    return rows


def _segment_mean(v, idx, n):
    out = v.new_zeros((n, v.shape[1]))
    out.index_add_(0, idx, v)
    return out / torch.bincount(idx, minlength=n).unsqueeze(-1)


def cmd_probe(args) -> dict:
    model = load_model(args.checkpoint)
    table = load_split(dataset_path("perov_5", "train")).subset(range(args.n))
    batch = next(table.iterate_batches(len(table), shuffle=False))
    rows = probe(model, batch)
    for r in rows:
        print(json.dumps(r))
    return {"checkpoint": args.checkpoint, "n_train_crystals": args.n, "rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", choices=["sampler", "probe", "handoff"])
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "crysbfn_perov5.pt"))
    p.add_argument("--steps", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--n", type=int, default=500)
    p.add_argument(
        "--parts",
        nargs="+",
        default=["coords+lattice"],
        choices=["coords+lattice", "coords", "lattice"],
        help="handoff: what is truth-centred",
    )
    p.add_argument("--quick", action="store_true", help="sampler: shipped end-back only")
    p.add_argument("--label", default=None, help="key in the JSON record (default: command)")
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {"sampler": cmd_sampler, "probe": cmd_probe, "handoff": cmd_handoff}[args.command](
        args
    )
    record = json.loads(OUT.read_text()) if OUT.exists() else {}
    record[args.label or args.command] = result
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
