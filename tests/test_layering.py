"""House rule: generic maths (methods/, nets/) never imports crystal I/O or Ray."""

from __future__ import annotations

import subprocess
import sys

from crysray.methods.registry import METHODS

# Builds every registered method for both tasks, with statistics fitted on a two-crystal
# "training split", and samples one step: all with crystal I/O and Ray unimportable.
BLOCK = """
import sys
for name in ("pymatgen", "ray", "pyarrow", "matgl", "pandas"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
import torch
from crysray.methods.registry import METHODS, build_method, fit_statistics, load_config
from crysray.types import SampleSpec


class Split:  # what fit_statistics reads of a training split: two cubic 2-atom cells
    num_atoms = np.array([2, 2])
    atom_types = np.array([8, 22, 8, 22])
    lattice = np.stack([4.0 * np.eye(3), 4.2 * np.eye(3)])

    def lattice_std(self):
        return float(self.lattice.std())


tiny = ["net.hidden_dim=16", "net.num_layers=1", "net.num_freqs=2", "net.time_dim=8"]
for name in METHODS:
    for task in ("csp", "dng"):
        overrides = [f"method.name={name}", f"method.task={task}", *tiny]
        config = fit_statistics(load_config("crysbfn_perov5", overrides), Split())
        model = build_method(config)
        spec = SampleSpec(torch.tensor([2]), torch.tensor([8, 22]) if task == "csp" else None)
        out = model.sample(spec, 1, torch.Generator().manual_seed(0))
        assert out.atom_types.shape == (2,)
        print("ok", type(model).__name__, task)
"""


def test_every_method_imports_without_pymatgen_or_ray():
    result = subprocess.run(
        [sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = {
        f"ok {entry.implementation.partition(':')[2]} {task}"
        for entry in METHODS.values()
        for task in ("csp", "dng")
    }
    assert set(result.stdout.strip().splitlines()) == expected
