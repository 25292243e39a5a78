"""The registry behind every extension point, and the terminal tables."""

from __future__ import annotations

import io

import pytest

from asrtune.errors import AsrtuneError
from asrtune.registry import Registry
from asrtune.report import format_table, print_table


def test_register_get_names_contains_iter():
    registry: Registry[type] = Registry("widget")

    @registry.register("zeta")
    class Zeta:
        pass

    @registry.register("alpha")
    class Alpha:
        pass

    assert registry.get("zeta") is Zeta  # the decorator hands the class back unchanged
    assert registry.get("alpha") is Alpha
    assert registry.names() == ["alpha", "zeta"]
    assert list(registry) == ["alpha", "zeta"]
    assert "alpha" in registry and "beta" not in registry


def test_unknown_name_is_a_user_error_listing_the_known_ones():
    registry: Registry[object] = Registry("widget")
    registry.register("one")(object())
    with pytest.raises(AsrtuneError, match=r"unknown widget 'two' \(known: one\)"):
        registry.get("two")
    with pytest.raises(AsrtuneError, match=r"known: none"):
        Registry("gadget").get("x")


def test_duplicate_registration_is_a_programming_error():
    registry: Registry[object] = Registry("widget")
    registry.register("one")(1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("one")(2)
    assert registry.get("one") == 1


def test_format_table_pads_columns_to_the_widest_cell():
    table = format_table(["name", "n"], [["a", 1], ["long", 22]])
    assert table == ("| name | n  |\n|------|----|\n| a    | 1  |\n| long | 22 |")


def test_print_table_writes_to_the_given_stream():
    out = io.StringIO()
    print_table(["k"], [["v"]], file=out)
    assert out.getvalue() == "| k |\n|---|\n| v |\n"
