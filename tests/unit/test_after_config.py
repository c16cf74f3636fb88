"""The [preview] and [canary] sections: what they accept, and what they refuse by name."""

from __future__ import annotations

import pytest

from bluegreen import config
from bluegreen.errors import ConfigError


def load(**sections: dict) -> config.Config:
    return config.from_dict({"app": "demo", "start": "x {port}", **sections}, source="t.toml")


def test_defaults_need_no_section() -> None:
    cfg = load()
    assert cfg.preview.header == "X-Bluegreen-Preview" and cfg.preview.token_env == ""
    assert cfg.preview.cookie == "bluegreen_preview"
    assert cfg.canary.cookie == "bluegreen_cohort" and cfg.canary.step == 60.0


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("preview", "header", "X Preview", "an HTTP header name"),
    ("preview", "cookie", "pre-view", "a cookie name"),
    ("preview", "token_env", "$TOKEN", "the NAME of an environment variable"),
    ("canary", "cookie", "a;b", "a cookie name"),
    ("canary", "step", 0, "a number of seconds > 0"),
])
def test_bad_values_name_the_key(section: str, key: str, value: object,
                                 expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(**{section: {key: value}})
    assert f"{section}.{key}" in str(err.value) and expected in str(err.value)


def test_the_preview_and_the_cohort_need_two_cookies() -> None:
    with pytest.raises(ConfigError, match=r"preview\.cookie.*two cookies"):
        load(preview={"cookie": "c"}, canary={"cookie": "c"})
