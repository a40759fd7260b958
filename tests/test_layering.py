"""House rule: generic maths (methods/, nets/) never imports crystal I/O or Ray."""

from __future__ import annotations

import subprocess
import sys

BLOCK = """
import sys
for name in ("pymatgen", "ray", "pyarrow", "matgl", "pandas"):
    sys.modules[name] = None  # any import of these now raises ImportError
import torch
from crysray.methods.registry import build_method
from crysray.methods.registry import load_config
config = load_config("crysbfn_perov5", ["net.hidden_dim=16", "net.num_layers=1"])
model = build_method(config.replace("data", lattice_std=2.0))
print("ok", type(model).__name__)
"""


def test_methods_import_without_pymatgen_or_ray():
    result = subprocess.run(
        [sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok CrysBFN"
