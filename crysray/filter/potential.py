"""Load a MatGL interatomic potential, converting matgl <= 2.x checkpoints at load time.

Which folders are "legacy" and why (see ../shared/matgl/README.md):

matgl 3.0 changed the message-passing convention of TensorNet (already in 2.2.0), M3GNet and
QET: the message of a directed edge ``i -> j`` (``i`` the centre atom) used to be summed into
the destination atom ``j`` and is now gathered into the source atom ``i``. The message
functions see ``[v_i, v_j, e_ij]`` and are not symmetric, so an old checkpoint loads without
error under matgl 4.x but gives wrong energies for every system with more than one element.

matgl writes no library version into a checkpoint, so the format is read from what an old
save leaves behind (``detect_legacy_checkpoint``):

* TensorNet: ``@model_version`` of the model in ``model.json`` is 1; the class was bumped to
  version 2 together with the convention fix.
* M3GNet: no version bump came with the fix. Checkpoints written before matgl 3.0.3 carry the
  ``element_refs.onehot`` buffer in ``state.pt`` (the AtomRef identity-matrix cache, removed in
  3.0.3), and the 3.x saves name their module ``matgl.models._m3gnet_pyg`` / ``_m3gnet_dgl``
  while 2.x and 4.x both write ``matgl.models._m3gnet``. So ``_m3gnet`` + ``onehot`` means a
  2.x save, i.e. the old convention.

The conversion (``convert_to_destination_aggregation``) restores the old behaviour exactly:

* TensorNet: the first embedding layer ``tensor_embedding.emb2`` takes ``[z_i, z_j]``;
  swapping its two input-column blocks is the same as swapping the roles of the two atoms,
  which is what the direction change did. A pure weight permutation.
* M3GNet: the three-body term updates bond ``i -> j`` from the neighbours of ``i``, so no
  weight permutation can move the node update; instead every graph convolution is switched to
  a subclass whose node update scatters edge messages into ``dst`` (as in matgl 2.x).

The files on disk are never changed. Do not ``save()`` a converted model and load it again
through this module: a converted TensorNet would be permuted twice.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from crysray.resources import MATGL_MODELS, matgl_model_dir

# Name of the attribute that records which model a Potential was loaded from (cache keys).
MODEL_NAME_ATTR = "crysray_model_name"
DEFAULT_MODEL = "M3GNet-MP-2021.2.8-PES"


def default_model_path() -> Path:
    """The folder of ``DEFAULT_MODEL``, found or downloaded by ``crysray.resources``."""
    return matgl_model_dir(DEFAULT_MODEL)


def load_potential(
    name_or_path: str | os.PathLike | None = None,
    *,
    legacy: bool | None = None,
    device: str | torch.device | None = None,
):
    """A ``matgl.apps.pes.Potential`` in eval mode, converted if it is a matgl 2.x checkpoint.

    Args:
        name_or_path: a folder holding ``model.pt``, ``state.pt``, ``model.json``, or a model
            name: a name of ``crysray.resources.MATGL_MODELS`` is found or downloaded there,
            any other goes to ``matgl.load_model`` (current-format weights, e.g. from the
            Hugging Face hub). Default: ``$CRYSRAY_MATGL_MODEL``, else ``DEFAULT_MODEL``.
        legacy: force (True) or forbid (False) the legacy conversion of a folder; None detects
            it from the files (``detect_legacy_checkpoint``). Ignored for names.
        device: where the model lives; default CUDA when available, else CPU.

    Raises:
        ValueError: the checkpoint is not a Potential, or is legacy with an architecture whose
            conversion is not implemented.
    """
    target = name_or_path or os.environ.get("CRYSRAY_MATGL_MODEL") or DEFAULT_MODEL
    path = Path(target)
    if not path.is_dir() and str(target) in MATGL_MODELS:
        # matgl.load_model would give these matgl 2.x checkpoints wrong energies (see above)
        path = target = matgl_model_dir(str(target))
    if path.is_dir():
        is_legacy = detect_legacy_checkpoint(path) if legacy is None else legacy
        potential = _load_folder(path)
        if is_legacy:
            convert_to_destination_aggregation(potential)
    else:
        import matgl

        potential = matgl.load_model(str(target))
    if type(potential).__name__ != "Potential":
        raise ValueError(f"{target}: a {type(potential).__name__}, not a matgl Potential")
    setattr(potential, MODEL_NAME_ATTR, path.name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return potential.to(device).eval()


def model_name(potential) -> str:
    """The folder or model name a Potential was loaded from ("unknown" if not via crysray)."""
    return getattr(potential, MODEL_NAME_ATTR, "unknown")


def detect_legacy_checkpoint(folder: str | os.PathLike) -> bool:
    """True if the folder holds a matgl <= 2.x Potential (old message-passing convention).

    The evidence is described in the module docstring; it is read from ``model.json`` and the
    key names of ``state.pt`` only (no weights are used).
    """
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    model = meta.get("kwargs", {}).get("model", {})
    kind, version = model.get("@class"), int(model.get("@model_version", 0))
    if kind == "TensorNet":
        return version < 2
    if kind == "M3GNet":
        keys = torch.load(folder / "state.pt", map_location="cpu", weights_only=True).keys()
        has_onehot_cache = any(k.endswith("element_refs.onehot") for k in keys)
        return has_onehot_cache and model.get("@module") == "matgl.models._m3gnet"
    return False


def convert_to_destination_aggregation(potential) -> None:
    """Make a loaded Potential aggregate edge messages as matgl 2.x did, in place.

    Raises:
        ValueError: no conversion is defined for the model class (e.g. QET, CHGNet).
    """
    model = potential.model
    kind = type(model).__name__
    if kind == "TensorNet":
        _swap_input_blocks(model.tensor_embedding.emb2)
    elif kind == "M3GNet":
        for block in model.graph_layers:
            block.conv.__class__ = _destination_conv_class()
    else:
        raise ValueError(f"no legacy conversion for {kind} checkpoints")


def _load_folder(folder: Path):
    from matgl.apps.pes import Potential

    with warnings.catch_warnings():
        # TensorNet v1 checkpoints trigger matgl's "Incompatible model version" warning; the
        # conversion above is exactly what makes them compatible.
        warnings.filterwarnings("ignore", message="Incompatible model version")
        meta = json.loads((folder / "model.json").read_text())
        if meta.get("@class") != "Potential":
            raise ValueError(f"{folder}: a {meta.get('@class')} checkpoint, not a Potential")
        return Potential.load(folder)


def _swap_input_blocks(linear: torch.nn.Linear) -> None:
    """Swap input columns [0, n) and [n, 2n) of a Linear layer with 2n inputs, in place."""
    n = linear.in_features // 2
    with torch.no_grad():
        first = linear.weight[:, :n].clone()
        linear.weight[:, :n] = linear.weight[:, n : 2 * n]
        linear.weight[:, n : 2 * n] = first


_DESTINATION_CONV: type | None = None


def _destination_conv_class() -> type:
    """Subclass of matgl's M3GNetGraphConv whose node update sums messages into ``dst``.

    Built on first use so importing this module does not import matgl.
    """
    global _DESTINATION_CONV
    if _DESTINATION_CONV is None:
        from matgl.layers._graph_convolution import M3GNetGraphConv

        class DestinationM3GNetGraphConv(M3GNetGraphConv):
            def node_update_(self, edge_index, edge_feat, node_feat, rbf, u_per_edge, num_nodes):
                src, dst = edge_index[0], edge_index[1]
                parts = [node_feat[src], node_feat[dst], edge_feat]
                if self.include_state:
                    parts.append(u_per_edge)
                mess = self.node_update_func(torch.hstack(parts)) * self.node_weight_func(rbf)
                out = mess.new_zeros((num_nodes, mess.shape[1]))
                return out.index_add_(0, dst.long(), mess)  # the one change: dst, not src

        _DESTINATION_CONV = DestinationM3GNetGraphConv
    return _DESTINATION_CONV
