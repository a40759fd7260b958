"""De novo generation metrics (the CDVAE protocol the papers report; docs/evaluation.md E3).

- validity: structural (volume >= 0.1 A^3, all distances >= 0.5 A) and compositional (SMACT
  charge neutrality with the Pauling electronegativity test);
- coverage recall / precision: a test crystal is covered when some generated crystal is within
  both cutoffs, in structure (mean CrystalNN "ops" site fingerprint) and in composition (Magpie
  features, standardised); precision swaps the roles and divides by all generated crystals;
- Wasserstein distances to the test split of density and number of elements, on up to 1000
  randomly chosen valid crystals;
- uniqueness (among the valid generated crystals) and novelty (against the training split),
  both with StructureMatcher (crysray.filter.uniqueness).

Composition fingerprints are standardised as CDVAE does, with one fixed scaler for every
dataset: CDVAE ships constants fitted on its MP-20 data; crysray fits the same statistics, mean
and std of each Magpie feature, on the MP-20 training compositions available to it (the pilot
split, 1000 crystals) once, and caches them. The cutoffs then mean the same on every dataset.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from pymatgen.core import Structure
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

from crysray.atomic import atomic_path
from crysray.data.csv import dataset_path, load_split
from crysray.filter.composition import composition_check, composition_of
from crysray.filter.uniqueness import TrainingSet, novelty, uniqueness
from crysray.paths import default_cache_dir
from crysray.structures import structure_validity

# (structure, composition) cutoffs of CDVAE's COV_Cutoffs; datasets not listed use MP-20's
COV_CUTOFFS = {"perov_5": (0.2, 4.0), "carbon_24": (0.2, 4.0), "mp_20": (0.4, 10.0)}
PROPERTY_SAMPLES = 1000


def cutoffs_for(dataset: str) -> tuple[float, float]:
    return COV_CUTOFFS.get(dataset, COV_CUTOFFS["mp_20"])


@functools.cache
def _featurizers():
    """(CrystalNN site fingerprint, Magpie composition features), built once per process:
    loading the Magpie tables costs more than fingerprinting a small crystal."""
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie")


def _fingerprint(structure: Structure) -> tuple[np.ndarray, np.ndarray] | None:
    """(structure fingerprint, Magpie composition fingerprint), or None if either fails."""
    site, magpie = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [site.featurize(structure, i) for i in range(len(structure))]
            magpie = magpie.featurize(structure.composition)
    except Exception:  # noqa: BLE001 - CDVAE drops crystals whose fingerprint fails
        return None
    struct_fp, comp_fp = np.mean(sites, axis=0), np.asarray(magpie, dtype=np.float64)
    if not (np.isfinite(struct_fp).all() and np.isfinite(comp_fp).all()):
        return None
    return struct_fp, comp_fp


def fingerprints(structures: list[Structure | None], workers: int = 1):
    """(structure fps (M, S), composition fps (M, C), kept indices) of the crystals whose
    fingerprints could be computed."""
    todo = [(i, s) for i, s in enumerate(structures) if s is not None]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_fingerprint, [s for _, s in todo], chunksize=16))
    else:
        results = [_fingerprint(s) for _, s in todo]
    kept = [(i, r) for (i, _), r in zip(todo, results) if r is not None]
    if not kept:
        return np.zeros((0, 1)), np.zeros((0, 1)), np.zeros(0, dtype=int)
    index, pairs = zip(*kept)
    return (
        np.stack([p[0] for p in pairs]),
        np.stack([p[1] for p in pairs]),
        np.asarray(index),
    )


def reference_fingerprints(structures: list[Structure], workers: int = 1):
    """``fingerprints`` of a reference split, cached by the crystals' content: every model
    evaluated on a dataset compares against the same test split."""
    digest = hashlib.sha256()
    for s in structures:
        digest.update(np.asarray(s.lattice.matrix, np.float64).tobytes())
        digest.update(np.asarray(s.frac_coords, np.float64).tobytes())
        digest.update(np.asarray(s.atomic_numbers, np.int64).tobytes())
    path = default_cache_dir() / "dng" / f"fingerprints-{digest.hexdigest()[:24]}.npz"
    if path.is_file():
        saved = np.load(path)
        return saved["structure"], saved["composition"]
    struct_fp, comp_fp, _ = fingerprints(structures, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, structure=struct_fp, composition=comp_fp)
    return struct_fp, comp_fp


def composition_scaler() -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the Magpie features over the MP-20 (pilot) training compositions."""
    path = default_cache_dir() / "dng" / "magpie_scaler_mp_20_pilot.npz"
    if path.is_file():
        saved = np.load(path)
        return saved["mean"], saved["std"]
    magpie = _featurizers()[1]
    table = load_split(dataset_path("mp_20_pilot", "train"))
    features = np.array(
        [magpie.featurize(composition_of(z)) for z in table.compositions()], dtype=np.float64
    )
    mean, std = np.nanmean(features, 0), np.nanstd(features, 0)
    std = np.where(std > 0, std, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mean=mean, std=std)
    return mean, std


def coverage(gen_struct, gen_comp, ref_struct, ref_comp, cutoffs, num_generated: int):
    """COV-R and COV-P (CDVAE ``compute_cov``) from fingerprints; ``num_generated`` counts
    every generated crystal, fingerprinted or not (precision is divided by it)."""
    if len(gen_struct) == 0 or len(ref_struct) == 0:
        return 0.0, 0.0
    mean, std = composition_scaler()
    struct_d = cdist(gen_struct, ref_struct)
    comp_d = cdist((gen_comp - mean) / std, (ref_comp - mean) / std)
    s_cut, c_cut = cutoffs
    recall = np.mean((struct_d.min(0) <= s_cut) & (comp_d.min(0) <= c_cut))
    precision = np.sum((struct_d.min(1) <= s_cut) & (comp_d.min(1) <= c_cut)) / num_generated
    return float(recall), float(precision)


def _density(s: Structure) -> float:
    return float(s.density)


def _num_elements(s: Structure) -> int:
    return len(s.composition.elements)


def dng_metrics(
    generated: list[Structure | None],
    test: list[Structure],
    train: TrainingSet | None = None,
    dataset: str = "mp_20",
    workers: int = 1,
    seed: int = 0,
) -> dict:
    """The DNG table of one set of generated crystals (None = a cell that could not be built)."""
    n = len(generated)
    struct_ok = np.array(
        [s is not None and structure_validity(s.lattice.matrix, s.frac_coords) for s in generated]
    )
    checks = [
        composition_check(np.array(s.atomic_numbers)) if s is not None else False for s in generated
    ]
    comp_ok = np.array([bool(c) for c in checks])
    unchecked = checks.count(None)
    valid = struct_ok & comp_ok
    gen_s, gen_c, _ = fingerprints(generated, workers)
    ref_s, ref_c = reference_fingerprints(list(test), workers)
    recall, precision = coverage(gen_s, gen_c, ref_s, ref_c, cutoffs_for(dataset), n)

    rng = np.random.default_rng(seed)
    valid_idx = np.flatnonzero(valid)
    chosen = rng.permutation(valid_idx)[:PROPERTY_SAMPLES]
    sample = [generated[i] for i in chosen]
    out = {
        "n": n,
        "structure_validity": float(struct_ok.mean()) if n else 0.0,
        "composition_validity": float(comp_ok.mean()) if n else 0.0,
        "composition_not_checked": int(unchecked),  # too many elements for SMACT: invalid
        "validity": float(valid.mean()) if n else 0.0,
        "cov_recall": recall,
        "cov_precision": precision,
        "fingerprinted": len(gen_s),
        "property_samples": len(sample),
        "wdist_density": _wdist(sample, test, _density),
        "wdist_num_elements": _wdist(sample, test, _num_elements),
    }
    valid_structures = [generated[i] for i in valid_idx]
    unique, _ = uniqueness(valid_structures, [str(i) for i in valid_idx])
    out["uniqueness"] = float(unique.mean()) if len(unique) else 0.0
    if train is not None:
        novel = novelty(valid_structures, train)
        out["novelty"] = float(novel.mean()) if len(novel) else 0.0
        out["unique_and_novel"] = float((unique & novel).mean()) if len(novel) else 0.0
    return out


def _wdist(sample, reference, prop) -> float:
    if not sample:
        return float("nan")
    return float(wasserstein_distance([prop(s) for s in sample], [prop(s) for s in reference]))
