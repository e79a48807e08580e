"""The torch-geometric baseline computes what the trained model computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_geometric")

from molret.featurize import featurize_many  # noqa: E402
from molret.trainer.config import load_config  # noqa: E402
from molret.trainer.loop import build_model  # noqa: E402
from molret.trainer.model import PackedGraphs  # noqa: E402
from molret.trainer.pyg_reference import PygMoleculeEncoder  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("fingerprint_branch", "maccs_keys"), [(False, False), (True, False), (True, True)]
)
def test_pyg_encoder_equals_packed_model(fingerprint_branch: bool, maccs_keys: bool) -> None:
    torch.manual_seed(0)
    overrides = {"model.fingerprint_branch": fingerprint_branch, "model.maccs_keys": maccs_keys}
    model = build_model(load_config(REPO / "configs" / "smoke.yaml", overrides)).eval()
    assert (model.fingerprint is not None) == fingerprint_branch
    assert (model.keys is not None) == maccs_keys
    graphs, errors = featurize_many(
        ["CCO", "c1ccccc1C(=O)O", "[Na+].[Cl-]", "C[C@H](N)C(=O)O", "O"], keys=maccs_keys
    )
    assert not errors
    with torch.no_grad():
        want = model.encode_molecule(PackedGraphs.from_graphs(graphs)).embedding
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    reference = PygMoleculeEncoder(model)
    # Building the baseline must not touch the model (GINEConv re-initialises its MLP).
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[name], atol=0, rtol=0, msg=name)
    with torch.no_grad():
        got = reference(reference.batch(graphs))
        again = model.encode_molecule(PackedGraphs.from_graphs(graphs)).embedding
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, want, atol=0, rtol=0)
