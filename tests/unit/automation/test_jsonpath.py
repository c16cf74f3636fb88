"""The JSONPath subset used by the generic endpoint."""

from __future__ import annotations

import pytest

from bluegreen.automation.jsonpath import extract, parse_path

DOC = {"ref": "refs/heads/main", "a": {"b": [{"c": 1}, {"c": 2}]}, "odd key": {"x": "y"},
       "commits": [{"id": "1"}, {"id": "2"}, {"id": "3"}]}


@pytest.mark.parametrize("path, expected", [
    ("$.ref", "refs/heads/main"),
    ("$.a.b[0].c", 1),
    ("$.a.b[1].c", 2),
    ("$['odd key'].x", "y"),
    ('$["odd key"]["x"]', "y"),
    ("$.commits[-1].id", "3"),
    ("$", DOC),
])
def test_extract_finds_values(path: str, expected: object) -> None:
    assert extract(DOC, path) == expected


@pytest.mark.parametrize("path", ["$.missing", "$.a.b[2].c", "$.a.b[-3]", "$.ref.deeper",
                                  "$.a[0]", "$.commits.id"])
def test_extract_returns_none_for_absent_paths(path: str) -> None:
    assert extract(DOC, path) is None


@pytest.mark.parametrize("path", ["ref", "$..ref", "$.a.*", "$.a[?(@.c)]", "$.a b", "$[x]"])
def test_unsupported_or_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        parse_path(path)


def test_parse_path_steps() -> None:
    assert parse_path("$.a['b c'][3].d") == ("a", "b c", 3, "d")
