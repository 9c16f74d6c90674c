"""Every scheme served from quantized tables: the rows dequantize within FBGEMM's format error,
and the composition on them equals the float TorchRec collection's on the same rows."""

from __future__ import annotations

import doctest

import pytest
import torch

from schemekit import SCHEME_SPECS, kit_counts, spec_id

pytest.importorskip("fbgemm_gpu")
pytest.importorskip("torchrec")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from compemb.embeddings import EmbeddingBagCollection, EmbeddingSpec  # noqa: E402
from compemb.embeddings.torchrec import (  # noqa: E402
    TorchRecEmbeddingCollection,
    ids_to_kjt,
    keyed_to_batch,
)
from compemb.serving import collection, precision, tables  # noqa: E402
from compemb.serving.collection import QuantizedEmbeddingCollection  # noqa: E402
from compemb.serving.precision import PRECISIONS  # noqa: E402

SPECS = [spec for specs in SCHEME_SPECS.values() for spec in specs]
CARDS = [1000, 37, 5, 250]  # the 5-category feature keeps its full table under every scheme
D = 8


def _quantized(spec: EmbeddingSpec, name: str, mode: str = "sum", one_hot: int = 4
               ) -> tuple[EmbeddingBagCollection, QuantizedEmbeddingCollection]:
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(CARDS, D, spec.with_(mode=mode), counts=kit_counts(spec, CARDS))
    return ebc, QuantizedEmbeddingCollection.from_collection(ebc, name, one_hot=one_hot)


def _refused(spec: EmbeddingSpec, name: str) -> bool:
    """Whether a table of the spec has a width ``name`` would shrink but FBGEMM cannot pack."""
    p = PRECISIONS.lookup(name)
    ebc = EmbeddingBagCollection(CARDS, D, spec, counts=kit_counts(spec, CARDS))
    return any(p.shrinks(t.width) and t.width % p.width_multiple
               for plan in ebc.plans for t in plan.tables)


def _bound(weight: torch.Tensor, name: str) -> torch.Tensor:
    """(R, 1) the largest error FBGEMM's format allows each row, from the row's float16 scale
    and bias: half a step, the step's rounding over the code range, the bias's rounding."""
    p = PRECISIONS.lookup(name)
    if not p.scaled:
        kind = torch.float16 if p.bits == 16 else torch.float32
        return (weight - weight.to(kind).float()).abs().amax(1, keepdim=True)
    levels = 2**p.bits - 1
    low, high = weight.amin(1, keepdim=True), weight.amax(1, keepdim=True)
    scale_bias = p.quantize(weight)[1].contiguous().view(torch.float16).float()
    scale, bias = scale_bias[:, :1], scale_bias[:, 1:]
    exact = (high - low) / levels
    return 0.5 * scale + levels * (exact - scale).abs() + (low - bias).abs() + 1e-7


@pytest.mark.parametrize("name", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_tables_dequantize_within_the_format_error(spec: EmbeddingSpec, name: str) -> None:
    if _refused(spec, name):
        with pytest.raises(ValueError, match=f"cannot be stored in {name}: FBGEMM packs"):
            _quantized(spec, name)
        return
    ebc, qc = _quantized(spec, name)
    state = ebc.state_dict()
    for key, stored in qc.dequantized().items():
        weight = state[key]
        assert stored.shape == weight.shape and stored.dtype == torch.float32, key
        p = PRECISIONS.lookup(name)
        if not p.shrinks(weight.shape[1]):
            assert torch.equal(stored, weight), key  # stays float32
            continue
        err = (stored - weight).abs()
        assert (err <= _bound(weight, name)).all(), key


def test_the_bound_is_tight_enough_to_catch_a_wrong_row() -> None:
    weight = torch.randn(50, 16)
    stored = PRECISIONS.lookup("int8").dequantize(*PRECISIONS.lookup("int8").quantize(weight), 16)
    assert ((stored - weight).abs() <= _bound(weight, "int8")).all()
    shifted = stored.clone()
    shifted[3, 5] += 0.6 * (stored[3].amax() - stored[3].amin()) / 255
    assert not ((shifted - weight).abs() <= _bound(weight, "int8")).all()


def _float_twin(ebc: EmbeddingBagCollection, qc: QuantizedEmbeddingCollection,
                one_hot: int) -> TorchRecEmbeddingCollection:
    """The float TorchRec collection holding the quantized tables' dequantized rows."""
    trc = TorchRecEmbeddingCollection(CARDS, D, ebc.spec, plans=ebc.plans, one_hot=one_hot)
    state = {**ebc.state_dict(), **qc.dequantized()}
    trc.load_state_dict({own: state[local] for own, local in trc.state_key_map().items()})
    return trc


@pytest.mark.parametrize("name", ["fp16", "int8"])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_one_hot_composition_equals_the_float_route_exactly(spec: EmbeddingSpec,
                                                            name: str) -> None:
    if _refused(spec, name):
        pytest.skip(f"{name} refuses a width of this spec (tested above)")
    ebc, qc = _quantized(spec, name)
    trc = _float_twin(ebc, qc, 4)
    ids = torch.stack([torch.randint(0, n, (16,)) for n in CARDS], 1)
    ids[0] = torch.tensor([n - 1 for n in CARDS])
    out = qc(ids)
    assert torch.equal(out, keyed_to_batch(trc(ids_to_kjt(ids, trc.feature_names)), D))


def _bags(batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    bags = []
    for n in CARDS:
        lengths = torch.randint(0, 4, (batch,), generator=gen)
        lengths[1] = 0  # an empty bag
        values = torch.randint(0, n, (int(lengths.sum()),), generator=gen)
        bags.append((values, torch.cat([torch.zeros(1, dtype=torch.long),
                                        lengths.cumsum(0)[:-1]])))
    return bags


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_multi_hot_composition_equals_the_float_route(spec: EmbeddingSpec, mode: str) -> None:
    """Bags (an empty one, repeated ids): equal to the float route on the same rows; exactly
    where both pool the same way (FBGEMM's mean multiplies by 1/L where torch divides)."""
    if _refused(spec, "int8"):
        pytest.skip("int8 refuses a width of this spec (tested above)")
    ebc, qc = _quantized(spec, "int8", mode, one_hot=0)
    trc = _float_twin(ebc, qc, 0)
    bags = _bags(6)
    out = qc(torch.empty(6, 0, dtype=torch.long), bags)
    kjt = ids_to_kjt(torch.empty(6, 0, dtype=torch.long), trc.feature_names, bags)
    expected = keyed_to_batch(trc(kjt), D)
    assert out.shape == expected.shape
    assert torch.equal(out[1], expected[1])  # the empty bags
    if mode == "mean":
        torch.testing.assert_close(out, expected, rtol=2e-7, atol=1e-7)
    else:
        assert torch.equal(out, expected)


@pytest.mark.parametrize("bad", [-1, 37])
def test_ids_out_of_range_name_the_feature(bad: int) -> None:
    _, qc = _quantized(EmbeddingSpec("qr", collisions=4), "int8", one_hot=2)
    ids = torch.tensor([[3, 4], [5, bad]])
    bags = [(torch.tensor([1, 2]), torch.tensor([0, 1])), (torch.tensor([0]), torch.tensor([0, 1]))]
    with pytest.raises(IndexError, match=f"feature 'f1' id {bad} .* out of range 0..36"):
        qc(ids, bags)


def test_per_feature_precision_and_width_one_tables() -> None:
    ebc = EmbeddingBagCollection([100, 60], 1, EmbeddingSpec("full"))
    qc = QuantizedEmbeddingCollection.from_collection(ebc, "int8", per_feature={"f1": "fp16"})
    # width 1: int8 would take 5 bytes a row, float32 takes 4; fp16 takes 2
    assert qc.table_bytes() == {"f0__0": 400, "f1__0": 120}
    with pytest.raises(ValueError, match="per-feature precision for 'C9': no such feature"):
        QuantizedEmbeddingCollection.from_collection(ebc, "int8", per_feature={"C9": "fp16"})
    with pytest.raises(ValueError, match="unknown precision 'int3'; registered: fp32, fp16"):
        QuantizedEmbeddingCollection.from_collection(ebc, "int3")


def test_bytes_of_int8_full_tables_are_a_fifth_of_float32_at_width_16() -> None:
    ebc = EmbeddingBagCollection([1000, 40], 16, EmbeddingSpec("full"))
    qc = QuantizedEmbeddingCollection.from_collection(ebc, "int8")
    assert sum(qc.table_bytes().values()) == 1040 * 20  # 3.2x fewer than 1040 * 64


def test_docstring_examples_run() -> None:
    for module in (precision, tables, collection):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# ROBE's unaligned lookup pairs rows per id; TT and path reshape theirs alike and still fail on
# a feature without ids (an error in their float modules too).
@pytest.mark.parametrize("spec", SCHEME_SPECS["robe"], ids=spec_id)
def test_a_feature_without_ids_in_the_batch(spec: EmbeddingSpec) -> None:
    ebc, qc = _quantized(spec, "int8", one_hot=0)
    trc = _float_twin(ebc, qc, 0)
    bags = _bags(3)
    bags[3] = (torch.empty(0, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    out = qc(torch.empty(3, 0, dtype=torch.long), bags)
    kjt = ids_to_kjt(torch.empty(3, 0, dtype=torch.long), trc.feature_names, bags)
    assert torch.equal(out, keyed_to_batch(trc(kjt), D))
    assert not out[:, -1].any()


def test_a_shared_array_is_stored_once_and_read_by_every_feature() -> None:
    ebc = EmbeddingBagCollection([1000, 300, 250], 8, EmbeddingSpec("robe", size=64, block=4))
    assert all(plan.shared is not None for plan in ebc.plans)
    qc = QuantizedEmbeddingCollection.from_collection(ebc, "int8", one_hot=3)
    (stored,) = qc.unpooled.values()
    assert stored.names == ("robe",) and stored.lookups == (0, 0, 0)
    # 16 rows of Z=4 int8 codes, each row's scale and bias in 4 more bytes
    assert qc.table_bytes() == {"robe": 16 * stored._stride(0)} and stored._stride(0) >= 8
    assert stored.weights.numel() < 2 * 16 * stored._stride(0)  # the buffer holds it once
    assert set(qc.dequantized()) == {"shared.robe.weight"}
    with pytest.raises(ValueError, match=r"table robe is read by features 'f0' \(int8\) and "
                                         r"'f1' \(fp16\): it is stored once"):
        QuantizedEmbeddingCollection.from_collection(ebc, "int8", per_feature={"f1": "fp16"})


def test_lookups_name_each_table_and_read_every_one() -> None:
    w, fp16 = torch.randn(10, 4), PRECISIONS.lookup("fp16")
    with pytest.raises(ValueError, match=r"lookups \[0, 2\]: each must name one of the 2"):
        tables.QuantizedTables([("a", w, fp16), ("b", w, fp16)], "none", lookups=[0, 2])
    with pytest.raises(ValueError, match=r"lookups \[1, 1\]"):
        tables.QuantizedTables([("a", w, fp16), ("b", w, fp16)], "none", lookups=[1, 1])
