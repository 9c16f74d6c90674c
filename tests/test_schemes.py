"""Schemes as registered objects: the shared list covers them all, plans count exactly what the
modules hold, old checkpoints load, id maps follow the module, and a scheme registered from
outside the package trains, shards and counts."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compemb.config import dump_config, load_config_text
from compemb.embeddings import (
    SCHEMES,
    EmbeddingBagCollection,
    EmbeddingSpec,
    embedding_parameters,
    fit_budget,
    module_from_plan,
)
from compemb.spec import collection_parameters, plan_collection, shared_plans
from schemekit import SCHEME_SPECS, SPECS, kit_counts, spec_id

CARDS = [3, 5000, 40, 777, 9000]
FIXTURE = Path(__file__).parent / "fixtures" / "pre_registry_checkpoint.pt"
OUTSIDE = {"scheme": "lowrank_hash", "collisions": 4, "rank": 3}


@pytest.fixture
def outside():
    """The scheme of ``tests/outside_scheme.py``, registered by importing it, as a config's
    ``imports`` would; unregistered afterwards."""
    importlib.import_module("outside_scheme")
    yield EmbeddingSpec(**OUTSIDE)
    del SCHEMES["lowrank_hash"]
    del sys.modules["outside_scheme"]


def test_every_registered_scheme_is_in_the_shared_list():
    assert sorted(SCHEMES.names()) == sorted(SCHEME_SPECS)


def test_unknown_scheme_lists_the_registered_ones(outside):
    names = SCHEMES.names()  # the registered schemes, then the partition families
    assert "lowrank_hash" in names and names[-3:] == ("qr", "mixed_radix", "crt")
    with pytest.raises(ValueError, match=f"unknown scheme 'nope'; registered: {', '.join(names)}$"):
        EmbeddingSpec("nope")


def _check_plans(spec: EmbeddingSpec) -> None:
    ebc = EmbeddingBagCollection(CARDS, 8, spec, counts=kit_counts(spec, CARDS))
    assert collection_parameters(ebc.plans) == ebc.num_parameters
    assert embedding_parameters(CARDS, 8, spec) == ebc.num_parameters
    sized = plan_collection(CARDS, 8, spec, sizing=True)
    assert sum(p.index_bytes for p in sized) == ebc.index_bytes
    for plan in ebc.plans:
        module = module_from_plan(plan)  # on its own, it holds what it reads with others
        state = module.state_dict()
        params = (*plan.params, *(() if plan.shared is None else plan.shared.params))
        # every name and shape, both ways (a module's own buffers, the id maps, come before
        # its submodules' tensors in a state dict, after them in a plan)
        assert {p.name: p.shape for p in params} == {k: tuple(v.shape) for k, v in state.items()}
        assert len(params) == len(state)
    keys = {k for k in ebc.state_dict()}
    assert keys == {f"features.{f}.{p.name}" for f, plan in enumerate(ebc.plans)
                    for p in plan.params} | {f"shared.{s.key}.{p.name}"
                                             for s in shared_plans(ebc.plans) for p in s.params}


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_plans_name_and_count_every_tensor_the_modules_hold(spec):
    _check_plans(spec)


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_planned_bytes_are_the_bytes_of_the_feature_keyed_state(spec):
    """Parameters and id maps, each in the type the module stores it in: what the plans (and
    the frontier's memory column) count is what a checkpoint of the collection holds."""
    ebc = EmbeddingBagCollection(CARDS, 8, spec, counts=kit_counts(spec, CARDS))
    state = ebc.state_dict()
    for f, plan in enumerate(ebc.plans):
        own = {k: v for k, v in state.items() if k.startswith(f"features.{f}.")}
        assert sum(v.nbytes for v in own.values()) == plan.held_bytes, (f, plan.spec.scheme)
    shared = {s.key: s.num_bytes + s.index_bytes for s in shared_plans(ebc.plans)}
    for key, nbytes in shared.items():  # ROBE-Z's one array, counted once
        assert sum(v.nbytes for k, v in state.items() if k.startswith(f"shared.{key}.")) == nbytes
    total = sum(p.held_bytes for p in ebc.plans) + sum(shared.values())
    assert sum(v.nbytes for v in state.values()) == total
    sized = plan_collection(CARDS, 8, spec, sizing=True)
    assert sum(p.held_bytes for p in sized) == sum(p.held_bytes for p in ebc.plans)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.needs_counts or s.scheme == "cce"],
                         ids=spec_id)
def test_checkpoints_with_int64_maps_load(spec):
    """Id maps were int64 (relabel of md_block and md_qr, per-feature relabels) or int32 (CCE's
    assignment) before each was stored in its smallest type: such state loads, into the
    stored types, and gives the same vectors."""
    counts = kit_counts(spec, CARDS)
    saved = EmbeddingBagCollection(CARDS, 8, spec, counts=counts)
    state = saved.state_dict()
    narrow = {k: v.dtype for k, v in state.items() if not v.is_floating_point()}
    assert any(t in (torch.int32, torch.uint8) for t in narrow.values())
    old = {k: v if v.is_floating_point() else v.long() for k, v in state.items()}
    loaded = EmbeddingBagCollection(CARDS, 8, spec, counts=counts and [c[::-1].copy()
                                                                       for c in counts])
    loaded.load_state_dict(old)
    assert {k: v.dtype for k, v in loaded.state_dict().items() if k in narrow} == narrow
    ids = torch.stack([torch.arange(7) * (n // 7) for n in CARDS], dim=1)
    torch.testing.assert_close(loaded(ids), saved(ids), rtol=0, atol=0)


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_no_feature_holds_more_than_its_full_table(spec):
    for plan in plan_collection([2, *CARDS], 8, spec, counts=kit_counts(spec, [2, *CARDS])):
        assert plan.held_bytes <= plan.full_bytes or plan.scheme.name == "full"
        assert (plan.kept_full is not None) == (plan.scheme.name == "full" != spec.scheme)


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_state_saved_by_one_collection_loads_into_another(spec, tmp_path):
    torch.manual_seed(0)
    counts = kit_counts(spec, CARDS)
    saved = EmbeddingBagCollection(CARDS, 8, spec, counts=counts)
    torch.save(saved.state_dict(), tmp_path / "ebc.pt")
    torch.manual_seed(1)
    # other counts: the id maps a checkpoint brings win
    loaded = EmbeddingBagCollection(CARDS, 8, spec, counts=counts and [c[::-1].copy()
                                                                       for c in counts])
    loaded.load_state_dict(torch.load(tmp_path / "ebc.pt"))
    ids = torch.stack([torch.arange(7) * (n // 7) for n in CARDS], dim=1)
    torch.testing.assert_close(loaded(ids), saved(ids), rtol=0, atol=0)


def test_configs_written_before_keep_loading():
    """A run folder's config.yaml from before held every scheme's settings; those at their old
    defaults are what it says for a scheme without the knob. Any other value raises."""
    old = ("model:\n  embedding: {scheme: full, operation: mult, collisions: null, k: null, "
           "threshold: 0, family: null, path_transform: mlp, path_hidden: 64, mode: sum, "
           "init: default, order: natural, order_seed: 0, hot: 0}\n")
    assert load_config_text(old, "old").model.embedding.scheme == "full"
    with pytest.raises(ValueError, match="old: model.embedding: scheme 'full' has no setting "
                                         "'collisions'; its settings: none"):
        load_config_text(old.replace("collisions: null", "collisions: 4"), "old")


@pytest.mark.parametrize("spec", [EmbeddingSpec("qr", collisions=4, hot=7, order="frequency"),
                                  EmbeddingSpec("path", collisions=12, order="interleaved"),
                                  EmbeddingSpec("feature", k=2, hot=3)], ids=spec_id)
def test_sizing_plans_count_maps_without_counts(spec):
    counts = [np.arange(n) % 7 for n in CARDS]
    ebc = EmbeddingBagCollection(CARDS, 8, spec, counts=counts)
    sized = plan_collection(CARDS, 8, spec, sizing=True)
    assert sum(p.num_parameters for p in sized) == ebc.num_parameters
    assert sum(p.index_bytes for p in sized) == ebc.index_bytes > 0


def test_old_checkpoints_load_and_give_the_same_outputs():
    """State dicts written before schemes were registered objects (the fixture's script): their
    flat specs still parse, their keys are this code's keys, and loading them gives the outputs
    they gave. Built from other counts, so the loaded id maps must be the ones used. They were
    planned before features were capped at their full table's bytes: ``cap_at_full=False``
    (one feature of the path case is planned larger than its full table)."""
    old = torch.load(FIXTURE, weights_only=False)
    cards, d, ids = old["cards"], old["dim"], old["ids"]
    other_counts = [c[::-1].copy() for c in old["counts"]]
    for name, case in old["cases"].items():
        spec = EmbeddingSpec(**case["spec"], cap_at_full=False)
        ebc = EmbeddingBagCollection(cards, d, spec, counts=other_counts)
        assert set(ebc.state_dict()) == set(case["state"]), name
        ebc.load_state_dict(case["state"])
        torch.testing.assert_close(ebc(ids), case["output"], rtol=0, atol=1e-6, msg=name)


def test_a_checkpoint_planned_larger_than_the_full_table_says_how_to_load():
    old = torch.load(FIXTURE, weights_only=False)
    case = old["cases"]["path"]  # its feature 2 (40 categories) was planned larger
    ebc = EmbeddingBagCollection(old["cards"], old["dim"], EmbeddingSpec(**case["spec"]))
    with pytest.raises(RuntimeError, match="feature 2 keeps its full table .* Load it with "
                                           "model.embedding.cap_at_full=false"):
        ebc.load_state_dict(case["state"])


def test_old_torchrec_keys_are_kept():
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection

    old = torch.load(FIXTURE, weights_only=False)
    for name, case in old["cases"].items():
        spec = EmbeddingSpec(**case["spec"], cap_at_full=False)  # planned before the cap
        ebc = EmbeddingBagCollection(old["cards"], old["dim"], spec, counts=old["counts"])
        keys = TorchRecEmbeddingCollection(old["cards"], old["dim"], ebc.spec,
                                           plans=ebc.plans).state_key_map()
        # the path functions' module now also owns its id maps (saved as the local keys)
        added = {k: v for k, v in keys.items() if k not in case["torchrec_keys"]}
        assert {k: keys[k] for k in case["torchrec_keys"]} == case["torchrec_keys"], name
        assert all(v.endswith(".relabel") for v in added.values()), name


def test_id_maps_follow_a_moved_module_when_a_checkpoint_loads():
    """The stale-maps bug: a feature embedded by its own module (a path over 12 buckets) after
    a real move (``_apply(torch.clone)``) must use the id maps a checkpoint brings."""
    spec = EmbeddingSpec("path", collisions=12, order="frequency")
    rng = np.random.default_rng(0)
    counts_a = [rng.integers(0, 100, n) for n in CARDS]
    counts_b = [rng.integers(0, 100, n) for n in CARDS]
    moved = EmbeddingBagCollection(CARDS, 8, spec, counts=counts_a)
    assert moved.unstacked
    moved._apply(torch.clone)
    saved = EmbeddingBagCollection(CARDS, 8, spec, counts=counts_b)
    moved.load_state_dict(saved.state_dict())
    ids = torch.stack([torch.arange(50) * (n // 50) for n in CARDS], dim=1)
    torch.testing.assert_close(moved(ids), saved(ids), rtol=0, atol=0)
    module = module_from_plan(moved.plans[1])
    module._apply(torch.clone)
    module.load_state_dict({k[len("features.1."):]: v for k, v in saved.state_dict().items()
                            if k.startswith("features.1.")})
    torch.testing.assert_close(module(ids[:, 1:2]), saved(ids)[:, 1], rtol=0, atol=0)


def test_outside_scheme_counts_fits_and_matches_its_module(outside):
    _check_plans(outside)
    ebc = EmbeddingBagCollection(CARDS, 8, outside)
    assert ebc.unstacked[1] == "scheme 'lowrank_hash' has no stacked form"
    plan = ebc.plans[1]
    assert plan.num_parameters == 1250 * 3 + 8 * 3
    fitted = fit_budget(CARDS, 8, outside, 3_000)
    assert fitted.rank == 3 and embedding_parameters(CARDS, 8, fitted) <= 3_000
    with pytest.raises(ValueError, match="'lowrank_hash' has no setting 'operation'; its "
                                         "settings: collisions, rank"):
        EmbeddingSpec("lowrank_hash", "add", collisions=4)


def test_outside_scheme_on_torchrec_equals_the_local_collection(outside, view_grad):
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecSparseArch

    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(CARDS, 8, outside)
    arch = TorchRecSparseArch(CARDS, 8, outside, plans=ebc.plans)
    arch.load_local_state_dict(ebc.state_dict())
    ids = torch.stack([torch.arange(6) * (n // 6) for n in CARDS], dim=1)
    bags = [(torch.tensor([1, 2, 4000]), torch.tensor([0, 1, 1, 2, 3, 3]))]
    out, ref = arch(ids[:, :4], bags), ebc(ids[:, :4], bags)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    out.square().sum().backward()
    ref.square().sum().backward()
    own = dict(arch.named_parameters())
    local = ebc.state_dict(keep_vars=True)
    for key, name in arch.collection.state_key_map().items():
        torch.testing.assert_close(own[f"collection.{key}"].grad,
                                   view_grad(ebc.parameters(), local[name]), rtol=0, atol=1e-6)


def test_outside_scheme_trains_sharded_on_two_ranks(outside, tmp_path: Path):
    """``imports`` brings the scheme into torchrun's ranks; the run saves it in config.yaml."""
    pytest.importorskip("torchrec")
    sys.path.insert(0, str(Path(__file__).parent / "training"))
    import trainkit

    data = trainkit.synth_folder(tmp_path / "data", rows=600)
    config = trainkit.tiny_config(data, "train.sharding=torchrec", "train.max_steps=4",
                                  *(f"model.embedding.{k}={v}" for k, v in OUTSIDE.items()))
    assert config.model.embedding == outside.with_(sparse=True)  # Adagrad's sparse gradients
    config = dataclasses.replace(config, imports=("outside_scheme",))
    (tmp_path / "c.yaml").write_text(dump_config(config))
    env = {**trainkit.env(), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "compemb.cli", "train", "--config",
                          str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 4
    saved = load_config_text((tmp_path / "run" / "config.yaml").read_text(), "saved")
    assert saved.imports == ("outside_scheme",) and saved.model.embedding.rank == 3


def test_a_scheme_without_a_torchrec_route_is_refused_by_name(outside, monkeypatch):
    pytest.importorskip("torchrec")
    from compemb.embeddings.torchrec import TorchRecEmbeddingCollection
    from compemb.scheme import Scheme

    monkeypatch.setattr(type(outside.owner), "torchrec", Scheme.torchrec)
    with pytest.raises(ValueError, match="scheme 'lowrank_hash' has no TorchRec route; use "
                                         "train.sharding=replicate"):
        TorchRecEmbeddingCollection(CARDS, 8, outside)


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_params_command_takes_every_schemes_settings(spec, tmp_path, capsys):
    """``compemb params`` has a flag per setting (ints, floats, booleans, strings) and counts
    what the plans count."""
    from compemb.cli import main

    cards = tmp_path / "cards.json"
    cards.write_text(json.dumps(CARDS))
    flags = [f"--{k.replace('_', '-')}={str(v).lower() if isinstance(v, bool) else v}"
             for k, v in spec.to_dict().items() if v is not None and k != "sparse"]
    assert main(["params", "--cardinalities", str(cards), "--embedding-dim", "8", *flags,
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedding"] == embedding_parameters(CARDS, 8,
                                                                                    spec)


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_a_batch_without_ids_embeds_to_nothing_and_an_empty_bag_to_zeros(spec):
    """No reshape may guess a size from zero elements (TT, path and ROBE's routes did)."""
    ebc = EmbeddingBagCollection(CARDS, 8, spec, counts=kit_counts(spec, CARDS))
    outputs = sum(plan.num_outputs for plan in ebc.plans)
    assert ebc(torch.zeros((0, len(CARDS)), dtype=torch.long)).shape == (0, outputs, 8)
    for plan in ebc.plans:
        bag = module_from_plan(plan)
        out = bag(torch.tensor([], dtype=torch.long), torch.tensor([0, 0]))
        assert out.shape[0] == 2 and out.shape[-1] == 8 and not out.any()
