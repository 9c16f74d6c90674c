"""All categorical features of a model embedded in one call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from compemb.embeddings._bags import prepare_bags
from compemb.embeddings._fused import assemble
from compemb.embeddings.batched import TableGroup, TableStack
from compemb.embeddings.batched_path import PathGroup, PathStack
from compemb.embeddings.factory import module_from_plan
from compemb.embeddings.stacked import StackedGroup, StackKey
from compemb.operations import OPERATIONS
from compemb.spec import EmbeddingSpec, SharedPlan, plan_collection, shared_plans


def _merge_single_tables(grouped: dict[TableStack | PathStack, list[int]],
                         embedding_dim: int) -> None:
    """Move the one-table features (full tables, hashing) into the largest composed group whose
    operation has an identity, where a missing partition contributes it: one group, no
    reassembly."""
    single = TableStack("add", (embedding_dim,), ("digit",), False)
    targets = [key for key in grouped if isinstance(key, TableStack) and len(key.widths) > 1
               and key.operation is not None and OPERATIONS[key.operation].identity is not None
               and not key.relabelled and set(key.widths) == {embedding_dim}]  # fmt: skip
    if single not in grouped or not targets:
        return
    target = max(targets, key=lambda key: len(grouped[key]))
    grouped[target] = sorted(grouped[target] + grouped.pop(single))


class SharedTensors(nn.Module):
    """The tables of a :class:`~compemb.spec.SharedPlan` (ROBE-Z's one array), each a parameter
    under its plan name, drawn U(lo, hi) as the plan says; the features that read them hold a
    reference, so the collection saves them once: ``shared.<key>.<name>``."""

    def __init__(self, plan: SharedPlan, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        for p in plan.tables:
            weight = nn.Parameter(torch.empty(p.shape, device=device, dtype=dtype))
            with torch.no_grad():
                weight.uniform_(*p.bounds)
            self.register_parameter(p.name, weight)


class EmbeddingBagCollection(nn.Module):
    """F categorical features, each embedded as its :class:`~compemb.spec.FeaturePlan` says,
    looked up together.

    Features with at most ``spec.threshold`` categories, or too few to compress, keep full
    tables (:func:`~compemb.spec.resolve_spec`); ``plans`` records what each got. Features
    whose plans share a layout kind (all full tables; all QR-mult ones; ...) are stored stacked
    in one ``TableGroup`` (``compemb.embeddings.batched``), so a batch costs a few large lookups
    rather than two small ones per feature (two-partition path features too, up to 8 buckets).
    A feature whose partitions are not index arithmetic (attribute tables) gets its own module;
    ``unstacked`` says which and why. Outputs and initialization rules equal those of the
    per-feature modules of :func:`~compemb.embeddings.factory.make_embedding_bag`.

    The state dict names each feature's tables as its per-feature module does
    (``features.<f>.weights.<j>``, ``features.<f>.paths.0.0.weight``, ...), whatever group
    stores them, so checkpoints survive a change of grouping; tables several features read
    together (:class:`~compemb.spec.SharedPlan`: ROBE-Z's array) are saved once, as
    ``shared.<key>.<name>``, and held by ``shared``.

    Shapes: ``ids`` (B, F1) int64, one id per single-valued feature; ``bags`` the remaining
    F - F1 multi-hot features as ``(values (N,), offsets (B,))`` pairs. Output (B, F_out, D):
    one vector per feature, k per feature under the ``feature`` scheme.

    >>> ebc = EmbeddingBagCollection([1000, 50], 16, EmbeddingSpec("qr", collisions=4))
    >>> ebc(torch.tensor([[3, 7], [999, 49]])).shape
    torch.Size([2, 2, 16])
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        embedding_dim: int,
        spec: EmbeddingSpec,
        *,
        counts: Sequence[np.ndarray] | None = None,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if len(cardinalities) == 0:
            raise ValueError("EmbeddingBagCollection needs at least one feature")
        self.cardinalities = tuple(int(n) for n in cardinalities)
        self.embedding_dim = embedding_dim
        self.spec = spec
        self.plans = plan_collection(self.cardinalities, embedding_dim, spec, counts=counts)
        self.specs = tuple(plan.spec for plan in self.plans)
        self.validate = validate
        grouped: dict[TableStack | PathStack | StackKey, list[int]] = {}
        self.unstacked: dict[int, str] = {}
        for f, plan in enumerate(self.plans):
            key = plan.scheme.stacking(plan)
            if isinstance(key, str):
                self.unstacked[f] = key
            else:
                grouped.setdefault(key, []).append(f)
        _merge_single_tables(grouped, embedding_dim)
        self.groups = nn.ModuleList()
        self._group_features: list[tuple[int, ...]] = []
        for key, members in grouped.items():
            features = tuple(members)
            cards = [self.cardinalities[f] for f in features]
            lays = [self.plans[f].partitions.layout() for f in features]
            relabels = [self.plans[f].partitions.relabeling() for f in features]
            if isinstance(key, StackKey):
                group: nn.Module = key.build([self.plans[f] for f in features],
                                             sparse=spec.sparse, device=device, dtype=dtype)
            elif isinstance(key, PathStack):
                group = PathGroup(key.transform, key.dim, key.hidden, cards, lays,
                                             sparse=spec.sparse, relabels=relabels,
                                             device=device, dtype=dtype)
            else:
                op = None if key.operation is None else OPERATIONS[key.operation]
                group = TableGroup(op, key.widths, cards, lays,
                                   [[t.bounds for t in self.plans[f].tables] for f in features],
                                   sparse=spec.sparse, relabels=relabels, device=device,
                                   dtype=dtype)
            self.groups.append(group)
            self._group_features.append(features)
        held = {key for group in self.groups if isinstance(group, StackedGroup)
                for key in group.shared_keys}  # fmt: skip
        self.shared = nn.ModuleDict({s.key: SharedTensors(s, device, dtype)
                                     for s in shared_plans(self.plans) if s.key not in held})
        for f in self.unstacked:
            if self.plans[f].shared is not None and self.plans[f].shared.key in held:
                raise ValueError(f"feature {f} reads shared tables {self.plans[f].shared.key!r}"
                                 f" that a stacked group holds, but is not in it "
                                 f"({self.unstacked[f]})")
        self.modules_by_feature = nn.ModuleDict({
            str(f): module_from_plan(self.plans[f], validate=False, device=device, dtype=dtype,
                                     shared=self._shared_of(f))
            for f in self.unstacked
        })  # fmt: skip
        widths = [plan.num_outputs for plan in self.plans]
        self._widths = tuple(widths)
        self._slot = [sum(widths[:f]) for f in range(len(widths))]
        # The common case, every feature single-valued: each group's columns and the output
        # order, precomputed (None where no gather is needed).
        for g, members in enumerate(self._group_features):
            cols = None if members == tuple(range(len(cardinalities))) else torch.tensor(members)
            self.register_buffer(f"_cols{g}", cols, persistent=False)
        for p, f in enumerate(int(f) for f in self.modules_by_feature):
            self.register_buffer(f"_module_cols{p}", torch.tensor([f]), persistent=False)
        for p, features in enumerate(self._piece_features()):
            self.register_buffer(f"_slots{p}", self._slots(features), persistent=False)
        self.register_buffer(
            "_limits", torch.tensor(self.cardinalities, device=device), persistent=False
        )
        self._key_map = self._feature_keys()
        # id maps a scheme redraws from its seed: checkpoints written before they were saved
        # load without them
        self._seeded = {f"features.{f}.{p.name}" for f, plan in enumerate(self.plans)
                        for p in plan.params if p.init == "seed"}
        self.register_state_dict_post_hook(_to_feature_keys)
        self.register_load_state_dict_pre_hook(_from_feature_keys)

    def _shared_of(self, feature: int) -> nn.Module | None:
        """The module holding what feature ``feature`` reads with others, or None."""
        shared = self.plans[feature].shared
        return None if shared is None else self.shared[shared.key]

    def _feature_keys(self) -> list[tuple[str, str, Any]]:
        """(feature key, internal key, where in the internal tensor) for every tensor of every
        feature's plan: ``features.<f>.<name>``, the per-feature module's own keys."""
        keys: list[tuple[str, str, Any]] = []
        for g, (group, members) in enumerate(zip(self.groups, self._group_features,
                                                 strict=True)):
            if isinstance(group, StackedGroup):
                keys.extend(group.feature_keys(f"groups.{g}", members))
                continue
            index = group.index
            for i, f in enumerate(members):
                plan = self.plans[f]
                for j, p in enumerate(plan.tables):
                    s = index.starts[j][i]
                    stored = f"groups.{g}.weight" if isinstance(group, PathGroup) \
                        else f"groups.{g}.weights.{j}"
                    keys.append((f"features.{f}.{p.name}", stored, slice(s, s + p.rows)))
                for layer, p in enumerate(plan.dense):
                    keys.append((f"features.{f}.{p.name}", f"groups.{g}.layers.{layer}", i))
                for p in plan.maps:
                    if p.name == "relabel":
                        s = sum(index.relabel_rows[:i])
                        keys.append((f"features.{f}.relabel", f"groups.{g}.index.relabel",
                                     slice(s, s + index.relabel_rows[i])))
                    else:  # hot ids, kept with the last partition (the hot slots)
                        j = len(plan.tables) - 1
                        keys.append((f"features.{f}.{p.name}", f"groups.{g}.index.hot{j}",
                                     (i, slice(0, index.hot_counts[j][i]))))
        for key in self.modules_by_feature:
            for p in self.plans[int(key)].params:
                keys.append((f"features.{key}.{p.name}", f"modules_by_feature.{key}.{p.name}",
                             None))
        return keys

    @property
    def num_outputs(self) -> int:
        """F_out: vectors per sample (features, counting k for each feature-generation one)."""
        return sum(self._widths)

    @property
    def num_rows(self) -> int:
        """Rows in all tables."""
        return sum(g.num_rows for g in self.groups) + sum(
            m.num_rows for f, m in self.modules_by_feature.items()
            if self.plans[int(f)].shared is None
        ) + sum(t.shape[0] for s in self.shared.values() for t in s.parameters())

    def tables(self, feature: int) -> list[torch.Tensor]:
        """Feature ``feature``'s tables, in partition order: views into the stacked weights
        (or the parameters of its own module, then the shared tables it reads), e.g. to inspect
        or export one feature."""
        for group, members in zip(self.groups, self._group_features, strict=True):
            if feature in members:
                return group.tables(members.index(feature))
        shared = self._shared_of(feature)
        return [*self.modules_by_feature[str(feature)].parameters(),
                *(() if shared is None else shared.parameters())]

    def reclusterer(self, feature: int) -> nn.Module:
        """What reclusters feature ``feature`` (a scheme that ``reclusters``, CCE): its own
        module, or its member of a stacked group (which works on views of the group's tensors)."""
        for group, members in zip(self.groups, self._group_features, strict=True):
            if feature in members:
                return group.members[members.index(feature)]
        return self.modules_by_feature[str(feature)]

    def table_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (row-indexed, shape (rows, width)), without path functions: what
        a row-wise optimizer treats row by row."""
        tables: list[nn.Parameter] = []
        for group in self.groups:
            if isinstance(group, StackedGroup):
                tables.extend(group.table_parameters())
            else:
                tables.extend(group.weights if isinstance(group, TableGroup) else [group.weight])
        for key, module in self.modules_by_feature.items():
            own = dict(module.named_parameters())
            tables.extend(own[p.name] for p in self.plans[int(key)].tables)
        for shared in self.shared.values():
            tables.extend(shared.parameters())
        return tables

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def num_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    @property
    def index_bytes(self) -> int:
        """Bytes of the frequency maps kept beside the tables (relabelled ids: 4 per category
        of a renumbered feature; hot ids: 8 each), from the plans; 0 for the paper's
        partitions."""
        return sum(plan.index_bytes for plan in self.plans) + sum(
            s.index_bytes for s in shared_plans(self.plans))

    @property
    def full_parameters(self) -> int:
        """Parameters of the full tables: sum of n x D."""
        return sum(self.cardinalities) * self.embedding_dim

    @property
    def compression_ratio(self) -> float:
        return self.full_parameters / max(self.num_parameters, 1)

    def forward(
        self,
        ids: torch.Tensor,
        bags: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    ) -> torch.Tensor:
        """Embed a batch: ids (B, F1) and F - F1 bags -> (B, F_out, D)."""
        num_features = len(self.cardinalities)
        if ids.dim() != 2 or ids.shape[1] + len(bags) != num_features:
            raise ValueError(
                f"EmbeddingBagCollection: ids of shape {tuple(ids.shape)} and {len(bags)} bags "
                f"do not make the {num_features} features this collection embeds; "
                f"expected ids (B, F1) plus F - F1 bags"
            )
        single = ids.shape[1]
        if self.validate:
            self._check(ids, bags)
        ids = ids.long()
        if single == num_features:
            return self._forward_single(ids)
        pieces, features = [], []
        for group, members in zip(self.groups, self._group_features, strict=True):
            cols = [i for i, f in enumerate(members) if f < single]
            if cols:
                pieces.append(group(ids[:, [members[i] for i in cols]], cols))
            features.extend(members[i] for i in cols)
            for i, f in enumerate(members):
                if f >= single:
                    values, offsets = bags[f - single]
                    bag = prepare_bags("", self.cardinalities[f], values, offsets, None,
                                       self.spec.mode, False, False)
                    out = group.forward_bag(i, bag, self.spec.mode)
                    pieces.append(out if out.dim() == 3 else out.unsqueeze(1))
                    features.append(f)
        for key, module in self.modules_by_feature.items():
            f = int(key)
            out = module(ids[:, f : f + 1]) if f < single else module(*bags[f - single])
            pieces.append(out if out.dim() == 3 else out.unsqueeze(1))
            features.append(f)
        out = torch.cat(pieces, dim=1)
        order = self._order(features)
        return out if order is None else out.index_select(1, order.to(out.device))

    def _piece_features(self) -> list[tuple[int, ...]]:
        """The features of each piece of the all-single-valued forward, in piece order."""
        return [*self._group_features, *((int(f),) for f in self.modules_by_feature)]

    def _slots(self, features: Sequence[int]) -> torch.Tensor:
        """Output positions (F_out slots) of some features' vectors, in the given order."""
        slots = []
        for f in features:
            slots.extend(range(self._slot[f], self._slot[f] + self._widths[f]))
        return torch.tensor(slots)

    def _forward_single(self, ids: torch.Tensor) -> torch.Tensor:
        """Every feature single-valued: ids (B, F) -> (B, F_out, D)."""
        pieces = []
        for g, group in enumerate(self.groups):
            cols = getattr(self, f"_cols{g}")
            pieces.append(group(ids if cols is None else ids.index_select(1, cols)))
        for p, module in enumerate(self.modules_by_feature.values()):
            out = module(ids.index_select(1, getattr(self, f"_module_cols{p}")))
            pieces.append(out if out.dim() == 3 else out.unsqueeze(1))
        if len(pieces) == 1 and len(self.groups) == 1 and self._cols0 is None:
            return pieces[0]
        slots = [getattr(self, f"_slots{p}") for p in range(len(pieces))]
        return assemble(pieces, slots, self.num_outputs)

    def _order(self, features: Sequence[int]) -> torch.Tensor | None:
        """Output slots in feature order, given the order the pieces come in."""
        slots = self._slots(features).tolist()
        inverse = sorted(range(len(slots)), key=slots.__getitem__)
        return None if inverse == list(range(len(slots))) else torch.tensor(inverse)

    def _check(self, ids: torch.Tensor, bags: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"EmbeddingBagCollection: ids must be int64, got {ids.dtype}")
        limits = self._limits[: ids.shape[1]]
        bad = (ids < 0) | (ids >= limits)
        if bool(bad.any()):
            row, f = (int(v) for v in bad.nonzero()[0])
            raise IndexError(
                f"EmbeddingBagCollection: feature {f} id {int(ids[row, f])} in row {row} is out "
                f"of range; valid ids are 0..{self.cardinalities[f] - 1}"
            )
        for j, (values, offsets) in enumerate(bags):
            f = ids.shape[1] + j
            prepare_bags(
                f"EmbeddingBagCollection feature {f}", self.cardinalities[f], values, offsets,
                None, "sum", False, True,
            )  # fmt: skip


def _to_feature_keys(module: EmbeddingBagCollection, state_dict: dict, prefix: str,
                     local_metadata: dict) -> None:
    internal = {ikey: state_dict.pop(prefix + ikey) for _, ikey, _ in module._key_map
                if prefix + ikey in state_dict}  # fmt: skip
    for fkey, ikey, where in module._key_map:
        tensor = internal[ikey]
        state_dict[prefix + fkey] = tensor if where is None else tensor[where]


def _from_feature_keys(module: EmbeddingBagCollection, state_dict: dict, prefix: str,
                       local_metadata: dict, strict: bool, missing_keys: list,
                       unexpected_keys: list, error_msgs: list) -> None:
    if not any(k.startswith(prefix + "features.") for k in state_dict):
        return  # stored under the internal names (an older checkpoint): load as it is
    own = dict(module.named_parameters())
    own.update(module.named_buffers())
    targets: dict[str, torch.Tensor] = {}
    for fkey, ikey, where in module._key_map:
        if ikey not in targets:
            targets[ikey] = own[ikey].detach().clone()
        value = state_dict.pop(prefix + fkey, None)
        if value is None:
            if fkey not in module._seeded:  # else the seed's, which made the checkpoint's
                missing_keys.append(prefix + fkey)
            continue
        slot = targets[ikey] if where is None else targets[ikey][where]
        if value.shape != slot.shape:
            error_msgs.append(f"size mismatch for {prefix + fkey}: copying a param with shape "
                              f"{tuple(value.shape)}, the model's is {tuple(slot.shape)}")
            continue
        slot.copy_(value)
    for ikey, tensor in targets.items():
        state_dict[prefix + ikey] = tensor
    for f, plan in enumerate(module.plans):
        if plan.kept_full is not None and plan.spec.cap_at_full and any(
                k.startswith(f"{prefix}features.{f}.") for k in state_dict):
            error_msgs.append(
                f"feature {f} keeps its full table ({plan.kept_full}), but the checkpoint holds "
                f"other tensors for it: written before features were capped at their full "
                f"table? Load it with model.embedding.cap_at_full=false")
