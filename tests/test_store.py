from __future__ import annotations

from pathlib import Path

import pytest

from node.store import ContentError, ContentStore, Item, load_library

LIBRARY = Path(__file__).resolve().parents[1] / "content" / "library.toml"


def test_sample_library_gives_each_zone_its_own_items_plus_the_shared_ones() -> None:
    lobby = {i.id for i in load_library(LIBRARY, "lobby")}
    platform = {i.id for i in load_library(LIBRARY, "platform")}
    assert "welcome" in lobby and "welcome" in platform  # zones = ["*"]
    assert "coffee-coupon" in lobby and "coffee-coupon" not in platform
    assert "platform-notice" in platform and "platform-notice" not in lobby


def test_unknown_field_names_the_item(tmp_path: Path) -> None:
    path = tmp_path / "lib.toml"
    path.write_text('[[item]]\nid = "x"\ntitle = "X"\nkind = "article"\nbody = ""\ncolour = 1\n')
    with pytest.raises(ContentError, match=r"item #1 \(x\).*colour"):
        load_library(path, "lobby")


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lib.toml"
    path.write_text('[[item]]\nid = "x"\ntitle = "X"\nkind = "poster"\nbody = ""\n')
    with pytest.raises(ContentError, match="kind 'poster'"):
        load_library(path, "lobby")


def test_broken_toml_is_a_content_error(tmp_path: Path) -> None:
    path = tmp_path / "lib.toml"
    path.write_text("[[item]\n")
    with pytest.raises(ContentError, match="cannot read content library"):
        load_library(path, "lobby")


def test_featured_item_comes_first_and_replace_all_swaps_the_whole_set(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "content.db")
    store.replace_all([Item("b", "B", "article", "b"), Item("a", "A", "coupon", "a", featured=True)])
    assert [i.id for i in store.items()] == ["a", "b"]
    assert store.featured() == Item("a", "A", "coupon", "a", featured=True)
    store.replace_all([Item("c", "C", "goods", "c", price_cents=120)])
    assert [i.id for i in store.items()] == ["c"]
    assert store.get("a") is None
    assert store.get("c").price_cents == 120
