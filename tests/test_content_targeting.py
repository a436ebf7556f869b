"""Targeting as a property (hypothesis): whatever the items' targets and the nodes'
zones and groups, a node's manifest lists exactly the live items aimed at it by
"everywhere", its zone, one of its groups or its own id, in key order."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from hub.manifests import Snapshot
from tapcast.protocol.manifest import ManifestItem
from tapcast.schedule import Schedule

NAMES = st.sampled_from(["a", "b", "c", "d"])
KEYS = st.sampled_from([f"item-{i}" for i in range(8)])
NODES = st.sampled_from([f"n{i}" for i in range(5)])


@st.composite
def libraries(draw: st.DrawFn) -> tuple[Snapshot, dict[str, set[tuple[str, str]]]]:
    keys = draw(st.sets(KEYS, max_size=8))
    aimed: dict[str, set[tuple[str, str]]] = {}
    for key in keys:
        aimed[key] = draw(st.sets(st.one_of(
            st.just(("all", "*")), st.tuples(st.just("zone"), NAMES),
            st.tuples(st.just("group"), NAMES), st.tuples(st.just("node"), NODES)),
            max_size=4))
    targets: dict[tuple[str, str], list[str]] = {}
    for key, rows in aimed.items():
        for row in rows:
            targets.setdefault(row, []).append(key)
    groups = draw(st.dictionaries(NODES, st.lists(NAMES, max_size=3, unique=True)))
    items = {k: ManifestItem(k, 1, "article", k, "", 0, None, Schedule()) for k in keys}
    return Snapshot(items, targets, groups), aimed


@settings(max_examples=300, deadline=None)
@given(libraries(), NODES, st.one_of(st.none(), NAMES))
def test_a_node_gets_exactly_the_items_aimed_at_it(
        library: tuple[Snapshot, dict[str, set[tuple[str, str]]]], node_id: str,
        zone: str | None) -> None:
    snapshot, aimed = library
    mine = set(snapshot.groups.get(node_id, []))

    def reaches(rows: set[tuple[str, str]]) -> bool:
        return any(kind == "all" or (kind == "zone" and value == zone)
                   or (kind == "group" and value in mine)
                   or (kind == "node" and value == node_id) for kind, value in rows)

    expected = sorted(k for k, rows in aimed.items() if reaches(rows))
    assert [i.key for i in snapshot.for_node(node_id, zone)] == expected
