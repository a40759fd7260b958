"""crysray.filter.potential and graphs: legacy detection, conversion, reference energies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from crystals import arrays, cesium_chloride_type, rock_salt
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from crysray.filter.graphs import single_point_energies
from crysray.filter.potential import detect_legacy_checkpoint, load_potential, model_name


@pytest.fixture(scope="module")
def expected(shared_matgl) -> dict:
    """The reference energies of ../shared/matgl, per model and structure."""
    reference = json.loads((shared_matgl / "reference" / "energies.json").read_text())
    return reference["matgl_4.1.2_load_legacy_model"]


def reference_structures(shared_matgl) -> dict[str, Structure]:
    """Built as described in energies.json ``_structures``."""
    return {
        "MoS": cesium_chloride_type(4.0, ["Mo", "S"]),
        "NaCl": rock_salt(5.69),
        "LiFePO4": Structure.from_file(shared_matgl / "reference" / "LiFePO4.json"),
    }


def ase_energy(potential, structure: Structure) -> float:
    from matgl.ext.ase import PESCalculator

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = PESCalculator(potential, stress_unit="eV/A3")
    return float(atoms.get_potential_energy())


@pytest.mark.parametrize("model", ["M3GNet-MP-2021.2.8-PES", "TensorNet-MatPES-PBE-v2025.1-PES"])
def test_reference_energies_reproduced(model, potential, shared_matgl, expected):
    pot = (
        potential
        if model == "M3GNet-MP-2021.2.8-PES"
        else load_potential(shared_matgl / model, device="cpu")
    )
    assert model_name(pot) == model and not pot.training
    structures = reference_structures(shared_matgl)
    lattices, fracs, numbers = arrays(list(structures.values()))
    batched = single_point_energies(pot, lattices, fracs, numbers)
    for (name, s), e_batch in zip(structures.items(), batched):
        tol = 1e-4 * len(s)
        assert abs(ase_energy(pot, s) - expected[model][name]) < tol, name
        assert abs(e_batch - expected[model][name]) < tol, name  # one batched graph, same numbers


def test_shared_folders_are_detected_as_legacy(shared_matgl):
    for model in (
        "M3GNet-MP-2021.2.8-PES",
        "M3GNet-MatPES-PBE-v2025.1-PES",
        "TensorNet-MatPES-PBE-v2025.1-PES",
    ):
        assert detect_legacy_checkpoint(shared_matgl / model), model


def test_checkpoint_saved_by_current_matgl_is_not_legacy(tmp_path):
    from matgl.apps.pes import Potential
    from matgl.models import M3GNet

    Potential(
        model=M3GNet(element_types=("Na", "Cl"), units=16, nblocks=1), element_refs=np.zeros(2)
    ).save(tmp_path)
    assert not detect_legacy_checkpoint(tmp_path)
    loaded = load_potential(tmp_path, device="cpu")
    conv = type(loaded.model.graph_layers[0].conv).__name__
    assert conv == "M3GNetGraphConv"  # left as matgl built it


def test_without_conversion_binary_energies_are_wrong(potential, shared_matgl, expected):
    """The conversion is what makes the numbers right: forcing it off breaks NaCl."""
    raw = load_potential(shared_matgl / "M3GNet-MP-2021.2.8-PES", legacy=False, device="cpu")
    nacl = rock_salt(5.69)
    assert abs(ase_energy(raw, nacl) - expected["M3GNet-MP-2021.2.8-PES"]["NaCl"]) > 0.1
    assert abs(ase_energy(potential, nacl) - expected["M3GNet-MP-2021.2.8-PES"]["NaCl"]) < 8e-4


def test_single_point_marks_bad_crystals_nan(potential, expected):
    nacl = rock_salt(5.69)
    lattices = np.stack([nacl.lattice.matrix, np.full((3, 3), np.nan), np.eye(3) * 4.0])
    fracs = [nacl.frac_coords, np.zeros((1, 3)), np.zeros((1, 3))]
    numbers = [
        np.array(nacl.atomic_numbers),
        np.array([11]),
        np.array([99]),
    ]  # Es: not in the model
    energies = single_point_energies(potential, lattices, fracs, numbers)
    assert abs(energies[0] - expected["M3GNet-MP-2021.2.8-PES"]["NaCl"]) < 8e-4
    assert np.isnan(energies[1:]).all()
