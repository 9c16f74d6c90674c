"""Serving artifacts: a quantized model exported as one program, loaded in a fresh process
without compemb, equal to the model in process (runs: tests/training/test_training_serving.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fbgemm_gpu")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from compemb.embeddings import EmbeddingSpec  # noqa: E402
from compemb.models import build_model  # noqa: E402
from compemb.serving import export_program, quantize_model, serving_bytes  # noqa: E402

CARDS = [1000, 37, 5, 250]

# Run in a fresh interpreter whose path holds no compemb: torch, fbgemm_gpu and the file.
_SERVE = """
import sys, torch, fbgemm_gpu
program = torch.export.load(sys.argv[1]).module()
inputs = torch.load(sys.argv[2], weights_only=True)
out = {f"out{j}": program(*x) for j, x in enumerate(inputs["requests"])}
try:
    program(*inputs["bad"])
    out["error"] = ""
except Exception as err:
    out["error"] = str(err)
torch.save(out, sys.argv[3])
print(any(m.startswith("compemb") for m in sys.modules))
"""


def _request(batch: int, gen: torch.Generator) -> tuple:
    dense = torch.rand(batch, 3, generator=gen)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in CARDS[:2]], 1)
    bags = []
    for n in CARDS[2:]:
        lengths = torch.randint(0, 3, (batch,), generator=gen)
        values = torch.randint(0, n, (int(lengths.sum()),), generator=gen)
        bags.append((values, torch.cat([torch.zeros(1, dtype=torch.long),
                                        lengths.cumsum(0)[:-1]])))
    return dense, ids, tuple(bags)


@pytest.mark.parametrize("spec", [EmbeddingSpec("qr", collisions=4),
                                  EmbeddingSpec("robe", size=64, block=4),
                                  EmbeddingSpec("md", alpha=0.3, base_width=4, multiple_of=4)],
                         ids=["qr-mult", "robe", "md"])
def test_program_runs_without_compemb_and_equals_the_model(spec: EmbeddingSpec,
                                                           tmp_path: Path) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = build_model("dlrm", CARDS, 3, 8, spec)
    served = quantize_model(model, "int8", one_hot=2, feature_names=["a", "b", "c", "d"])
    path = export_program(served, tmp_path / "model.pt2", _request(4, gen))
    requests = [_request(b, gen) for b in (1, 9, 64)]
    dense, ids, bags = _request(3, gen)
    ids[2, 1] = 37  # out of range for feature 'b'
    torch.save({"requests": requests, "bad": (dense, ids, bags)}, tmp_path / "in.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ran = subprocess.run([sys.executable, "-c", _SERVE, str(path), str(tmp_path / "in.pt"),
                          str(tmp_path / "out.pt")], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip() == "False"  # compemb was never imported
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        for j, request in enumerate(requests):
            assert torch.equal(out[f"out{j}"], torch.sigmoid(served(*request))), j
    assert "feature 'b': an id is out of range 0..36" in out["error"]
    with pytest.raises(IndexError, match="feature 'b' id 37"):
        served(dense, ids, bags)
    float_bytes, int8_bytes = serving_bytes(model), serving_bytes(served)
    assert int8_bytes["dense_bytes"] == float_bytes["dense_bytes"]
    assert int8_bytes["table_bytes"] < float_bytes["table_bytes"] / 1.9


def test_a_batch_of_one_cannot_trace() -> None:
    model = quantize_model(build_model("dlrm", CARDS, 3, 8, EmbeddingSpec("full")), "fp16")
    request = _request(1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="at least 2 samples"):
        export_program(model, "unused.pt2", request)
