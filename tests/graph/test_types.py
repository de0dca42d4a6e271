"""Connection rules between socket types (docs/compatibility.md §3.1)."""

from graph.types import COMBO, type_name, types_compatible


def test_identical_types_connect() -> None:
    assert types_compatible("LATENT", "LATENT")


def test_different_types_do_not_connect() -> None:
    assert not types_compatible("LATENT", "IMAGE")


def test_wildcard_connects_on_either_side() -> None:
    assert types_compatible("*", "MODEL")
    assert types_compatible("CLIP", "*")


def test_unions_connect_when_they_share_a_member() -> None:
    assert types_compatible("IMAGE,MASK", "MASK")
    assert types_compatible("MASK", "IMAGE, MASK")
    assert types_compatible("IMAGE,MASK", "LATENT,MASK")
    assert not types_compatible("IMAGE,MASK", "LATENT,MODEL")


def test_a_list_of_choices_is_a_combo() -> None:
    assert type_name(["euler", "heun"]) == COMBO
    assert type_name(("a",)) == COMBO
    assert type_name("INT") == "INT"
