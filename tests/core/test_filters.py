"""Selections compiled to lookup tables over series pks, on a registry filled by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.core.filterlang import parse_filter_on
from streamgauge.core.filters import (
    CompiledSelection,
    LabelMatch,
    Selection,
    SelectionStack,
    _gather_bits,
)
from streamgauge.core.registry import DeviceRec, Registry, VariableRec
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import BadRequest
from streamgauge.domain.events import DevicePut, SeriesAdded, SeriesDropped, VariablePut
from streamgauge.domain.model import Device, Variable

# project pk -> devices (id, type, labels), each with variables air_temp and wind_speed
DEVICES = {
    1: [
        ("a", "weather_station", {"parity": "even", "site": "x"}),
        ("b", "buoy", {"parity": "odd"}),
        ("c", "weather_station", {"parity": "odd", "site": "y"}),
        ("d", None, {}),
    ],
    2: [
        ("a", "weather_station", {"parity": "even", "site": "x"}),
        ("z", "buoy", {"parity": "odd"}),
    ],
}
VARIABLES = ("air_temp", "wind_speed")


class Builder:
    """Fills a registry the way the store does: events adding devices, variables, then one
    series each."""

    def __init__(self) -> None:
        self.reg = Registry()
        self.next_pk = 1
        self.where: dict[int, tuple[int, str, str]] = {}  # series pk -> (project, device, var)

    def device(
        self, project_pk: int, dev_id: str, type_: str | None, labels: dict[str, str]
    ) -> DeviceRec:
        pk = len(self.reg.devices_by_pk) + 1
        doc = Device(
            id=dev_id,
            project=f"p{project_pk}",
            site=None,
            type=type_,
            name=dev_id,
            labels=labels,
            metadata={},
        )
        self.reg.apply(DevicePut(pk, project_pk, doc))
        return self.reg.devices_by_pk[pk]

    def variable(self, dev: DeviceRec, name: str, set_: int = 1) -> VariableRec:
        pk = len(self.reg.variables_by_pk) + 1
        doc = Variable(id=name, name=name, project=dev.doc.project, device=dev.doc.id, set=set_)
        self.reg.apply(VariablePut(pk, dev.pk, doc))
        return self.reg.variables_by_pk[pk]

    def series(self, dev: DeviceRec, var: VariableRec, set_: int = 1) -> int:
        pk = self.next_pk
        self.next_pk += 1
        added = SeriesAdded(pk, dev.project_pk, dev.pk, var.pk, set_, dev.doc.id, var.doc.id)
        self.reg.apply(added)
        self.where[pk] = (dev.project_pk, dev.doc.id, var.doc.id)
        return pk


def build() -> Builder:
    b = Builder()
    for project_pk, devices in DEVICES.items():
        for dev_id, type_, labels in devices:
            dev = b.device(project_pk, dev_id, type_, labels)
            for name in VARIABLES:
                b.series(dev, b.variable(dev, name))
    return b


def batch_of(series: list[int], project_pk: int = 1) -> Batch:
    n = len(series)
    return Batch(
        project_pk,
        np.arange(1, n + 1, dtype=np.int64),
        np.array(series, np.int64),
        np.zeros(n, np.int64),
        [0.0] * n,
        np.zeros(n, np.int64),
    )


def picked(b: Builder, selection: Selection) -> set[tuple[str, str]]:
    """The (device, variable) pairs the selection wants, over every series of the registry."""
    everything = sorted(b.where)
    mask = CompiledSelection(selection, b.reg).mask(batch_of(everything))
    chosen = [pk for pk, keep in zip(everything, mask.tolist(), strict=True) if keep]
    return {(b.where[pk][1], b.where[pk][2]) for pk in chosen}


def all_of(*devices: str) -> set[tuple[str, str]]:
    return {(d, v) for d in devices for v in VARIABLES}


def test_label_match_parse() -> None:
    assert LabelMatch.parse("k") == LabelMatch("k", None)
    assert LabelMatch.parse("k=v") == LabelMatch("k", "v")
    assert LabelMatch.parse("k=") == LabelMatch("k", "")
    assert LabelMatch.parse("k=a=b") == LabelMatch("k", "a=b")
    for bad in ("=v", "=", ""):
        with pytest.raises(BadRequest) as err:
            LabelMatch.parse(bad)
        assert err.value.status == 400
        assert err.value.details[0]["field"] == "label"


def test_label_match_matches() -> None:
    assert LabelMatch("k", None).matches({"k": ""})
    assert not LabelMatch("k", None).matches({"j": "v"})
    assert LabelMatch("k", "").matches({"k": ""})
    assert not LabelMatch("k", "").matches({"k": "v"})
    assert LabelMatch("k", "v").matches({"k": "v", "j": "w"})


def test_everything_of_one_project_only() -> None:
    b = build()
    assert picked(b, Selection(1)) == all_of("a", "b", "c", "d")
    assert picked(b, Selection(2)) == all_of("a", "z")
    assert picked(b, Selection(3)) == set()


def test_each_kind_alone() -> None:
    b = build()
    assert picked(b, Selection(1, devices=frozenset({"a", "c"}))) == all_of("a", "c")
    assert picked(b, Selection(1, devices=frozenset({"nope"}))) == set()
    assert picked(b, Selection(1, device_types=frozenset({"buoy"}))) == all_of("b")
    assert picked(b, Selection(1, variables=frozenset({"wind_speed"}))) == {
        (d, "wind_speed") for d in "abcd"
    }
    assert picked(b, Selection(1, variables=frozenset({"nope"}))) == set()
    assert picked(b, Selection(1, labels=(LabelMatch("site", None),))) == all_of("a", "c")
    assert picked(b, Selection(1, labels=(LabelMatch("parity", "odd"),))) == all_of("b", "c")


def test_or_within_a_kind() -> None:
    b = build()
    types = frozenset({"buoy", "weather_station"})
    assert picked(b, Selection(1, device_types=types)) == all_of("a", "b", "c")
    both = frozenset(VARIABLES)
    assert picked(b, Selection(1, variables=both)) == all_of("a", "b", "c", "d")
    labels = (LabelMatch("site", "y"), LabelMatch("parity", "even"))
    assert picked(b, Selection(1, labels=labels)) == all_of("a", "c")


def test_and_across_kinds() -> None:
    b = build()
    sel = Selection(
        1,
        device_types=frozenset({"weather_station"}),
        labels=(LabelMatch("parity", "odd"),),
    )
    assert picked(b, sel) == all_of("c")
    sel = Selection(
        1,
        devices=frozenset({"a", "b", "c"}),
        device_types=frozenset({"weather_station", "buoy"}),
        variables=frozenset({"air_temp"}),
        labels=(LabelMatch("parity", None),),
    )
    assert picked(b, sel) == {("a", "air_temp"), ("b", "air_temp"), ("c", "air_temp")}
    sel = Selection(1, devices=frozenset({"b"}), device_types=frozenset({"weather_station"}))
    assert picked(b, sel) == set()


def test_project_isolation() -> None:
    b = build()
    # device "a" and the variable names exist in both projects; only project 2's series match
    for sel in (
        Selection(2, devices=frozenset({"a"})),
        Selection(2, device_types=frozenset({"weather_station"})),
        Selection(2, labels=(LabelMatch("site", "x"),)),
    ):
        mask = CompiledSelection(sel, b.reg).mask(batch_of(sorted(b.where), 2))
        chosen = [pk for pk, keep in zip(sorted(b.where), mask.tolist(), strict=True) if keep]
        assert chosen and {b.where[pk][0] for pk in chosen} == {2}
        assert {b.where[pk][1] for pk in chosen} == {"a"}
    assert picked(b, Selection(2, devices=frozenset({"b"}))) == set()  # b is project 1's
    assert picked(b, Selection(1, devices=frozenset({"z"}))) == set()


def test_compile_a_range() -> None:
    b = build()
    sel = Selection(1, devices=frozenset({"b"}))
    tables = sel.tables(b.reg)
    full = sel.compile(b.reg, tables, 0, b.reg.series_end)
    assert sel.compile(b.reg, tables, 3, 7).tolist() == full[3:7].tolist()
    assert full[0] == np.False_  # pk 0 is never a series


def test_new_series_extend_the_compiled_table() -> None:
    b = build()
    sel = CompiledSelection(Selection(1, device_types=frozenset({"buoy"})), b.reg)
    before = sorted(b.where)
    assert sel.mask(batch_of(before)).sum() == 2
    version = b.reg.version
    # new sets of existing variables: series created by ingest, without a version bump
    dev_b = b.reg.devices[(1, "b")]
    extra = b.series(dev_b, b.reg.variables[(dev_b.pk, "air_temp")], set_=2)
    other = b.series(b.reg.devices[(1, "a")], b.reg.variables[(1, "air_temp")], set_=2)
    assert b.reg.version == version
    assert sel.mask(batch_of([extra, other, before[2]])).tolist() == [True, False, True]
    # a new device is a metadata change: the version grows and the table is rebuilt
    dev_y = b.device(1, "y", "buoy", {})
    assert b.reg.version > version
    new_dev = b.series(dev_y, b.variable(dev_y, "air_temp"))
    mask = sel.mask(batch_of([extra, new_dev, other, before[2]]))
    assert mask.tolist() == [True, True, False, True]


def test_metadata_change_recompiles_on_a_new_version() -> None:
    b = build()
    sel = CompiledSelection(Selection(1, labels=(LabelMatch("parity", "odd"),)), b.reg)
    everything = batch_of(sorted(b.where))
    first = sel.mask(everything)
    assert {b.where[pk][1] for pk, k in zip(sorted(b.where), first.tolist(), strict=True) if k} == {
        "b",
        "c",
    }
    # the compiled table is kept while the version stays...
    assert sel.mask(everything).tolist() == first.tolist()
    # ...and device d getting parity=odd (an event: the version grows) recompiles it
    dev = b.reg.devices[(1, "d")]
    version = b.reg.version
    b.reg.apply(DevicePut(dev.pk, 1, dev.doc.model_copy(update={"labels": {"parity": "odd"}})))
    assert b.reg.version > version
    again = sel.mask(everything)
    chosen = {b.where[pk][1] for pk, k in zip(sorted(b.where), again.tolist(), strict=True) if k}
    assert chosen == {"b", "c", "d"}


def test_selections_of_the_same_devices_share_one_read_only_bitset() -> None:
    """Sessions whose arguments pick the same devices (one state, different variables) keep
    one device bitset between them, not a copy each; a different set gets its own."""
    b = build()
    same = Selection(1, devices=frozenset({"a", "c"}))
    narrower = Selection(1, devices=frozenset({"c", "a"}), variables=frozenset({"air_temp"}))
    other = Selection(1, devices=frozenset({"a"}))
    compiled = [CompiledSelection(sel, b.reg) for sel in (same, narrower, other)]
    bits = [sel._refresh().devices for sel in compiled]
    assert bits[0] is not None and bits[0] is bits[1] and bits[2] is not bits[0]
    assert not bits[0].flags.writeable
    assert picked(b, same) == all_of("a", "c")
    assert picked(b, narrower) == {("a", "air_temp"), ("c", "air_temp")}
    assert picked(b, other) == all_of("a")


def test_dropped_series_and_pks_beyond_the_table_are_masked_out() -> None:
    b = build()
    sel = CompiledSelection(Selection(1), b.reg)
    pks = sorted(b.where)
    assert sel.mask(batch_of(pks[:2])).tolist() == [True, True]
    b.reg.apply(SeriesDropped(pks[0]))
    far = b.reg.series_end + 5000  # a since-deleted series the table never saw
    mask = sel.mask(batch_of([pks[0], pks[1], far, 0]))
    assert mask.tolist() == [False, True, False, False]
    # a batch of only unknown pks, and an empty batch
    assert sel.mask(batch_of([far, far + 1])).tolist() == [False, False]
    assert sel.mask(batch_of([])).tolist() == []


@given(
    st.sets(st.integers(1, 300), max_size=40),
    st.lists(st.integers(-1, 400), max_size=60),
)
def test_device_bits_agree_with_a_set(wanted: set[int], keys: list[int]) -> None:
    table = np.zeros((300 + 8) // 8 * 8 + 16, np.bool_)
    table[np.array(sorted(wanted), np.int64) + 8] = True
    bits = np.packbits(table, bitorder="little")
    got = _gather_bits(bits, np.array(keys, np.int64)).tolist()
    assert got == [k in wanted for k in keys]


_STACKED = [
    Selection(1),
    Selection(2),
    Selection(1, devices=frozenset({"a", "c"})),
    Selection(1, devices=frozenset({"c", "a"})),  # the same bitset, shared
    Selection(2, devices=frozenset({"z"})),
    Selection(1, device_types=frozenset({"weather_station"})),
    Selection(1, labels=(LabelMatch("parity", "odd"),)),
    Selection(1, variables=frozenset({"air_temp"})),
    Selection(1, devices=frozenset({"b"}), variables=frozenset({"wind_speed", "nope"})),
    Selection(1, qc_remove=1),
    Selection(1, variables=frozenset({"air_temp"}), qc_remove=3),
    Selection(1, devices=frozenset({"nope"})),
    Selection(1, expr=parse_filter_on("(air_temp > 0.5)")),
    Selection(1, devices=frozenset({"a", "b"}), expr=parse_filter_on("(wind_speed < 2)")),
    Selection(1, expr=parse_filter_on("(air_temp > 0.5)")),  # an equal expression, another object
    Selection(1, expr=parse_filter_on("(air_temp > 0.5)"), qc_remove=1),  # another table
    Selection(1, expr=parse_filter_on("(air_temp >= 2) or ((wind_speed = 1) and (air_temp < 3))")),
    Selection(2, expr=parse_filter_on("(air_temp > 0.5)")),
    Selection(2, variables=frozenset({"air_temp"}), expr=parse_filter_on("(wind_speed != 0)")),
]


@given(
    st.lists(st.integers(0, len(_STACKED) - 1), min_size=1, max_size=30),
    st.lists(st.tuples(st.integers(-1, 40), st.integers(0, 3), st.integers(0, 3)), max_size=40),
    st.integers(1, 2),
)
def test_stacked_masks_are_each_selections_mask(
    chosen: list[int], rows: list[tuple[int, int, int]], project_pk: int
) -> None:
    """A fan-out round's masks computed at once (``SelectionStack``) are, row for row, each
    selection's own: bitsets shared or not, name tables, QC flags, expressions, dropped series
    and pks beyond the tables."""
    b = build()
    b.reg.apply(SeriesDropped(3))
    selections = [
        CompiledSelection(s, b.reg)
        for s in (_STACKED[i] for i in chosen)
        if s.project_pk == project_pk
    ]
    batch = batch_of([r[0] for r in rows], project_pk)
    batch.values[:] = [float(r[1]) for r in rows]
    batch.qc[:] = [r[2] for r in rows]
    stack = SelectionStack(selections, b.reg)
    assert stack.current(selections, b.reg)
    masks = stack.masks(batch)
    assert masks.shape == (len(selections), len(rows))
    for compiled, row in zip(selections, masks, strict=True):
        assert row.tolist() == compiled.mask(batch).tolist()


def test_a_stack_is_for_one_registry_version_and_list_of_selections() -> None:
    b = build()
    a, c = CompiledSelection(Selection(1), b.reg), CompiledSelection(Selection(1), b.reg)
    stack = SelectionStack([a, c], b.reg)
    assert stack.current([a, c], b.reg)
    assert not stack.current([c, a], b.reg)
    assert not stack.current([a], b.reg)
    assert not stack.current([a, c], Registry())
    b.device(1, "new", None, {})
    assert not stack.current([a, c], b.reg)
