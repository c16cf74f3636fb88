"""The settings the replay guards and the hardened server read: defaults and refusals.
(The rest of automation.toml is covered by test_automation_settings.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from bluegreen.automation.settings import load_settings
from bluegreen.errors import ConfigError
from tests.unit.automation.rules import MAIN_RULE


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "automation.toml"
    path.write_text(text + MAIN_RULE)
    return load_settings(path)


def test_defaults_are_safe_without_any_new_key(tmp_path: Path) -> None:
    settings = load(tmp_path, "")
    service = settings.service
    assert (service.header_timeout, service.channel_timeout, service.cleanup_interval) == (
        10.0, 30.0, 1.0)
    assert (service.connection_limit, service.client_connection_limit) == (200, 50)
    assert (settings.generic_auth, settings.generic_signature_tolerance) == ("either", 300.0)
    assert settings.git_ls_remote_timeout == 30.0


def test_every_new_key_is_read(tmp_path: Path) -> None:
    settings = load(tmp_path, """
[service]
header_timeout = 5
channel_timeout = 60
connection_limit = 1000
client_connection_limit = 0
cleanup_interval = 0.5
[generic]
auth = "signature"
signature_tolerance = 90
[git]
ls_remote_timeout = 12.5
""")
    service = settings.service
    assert (service.header_timeout, service.channel_timeout, service.cleanup_interval) == (
        5.0, 60.0, 0.5)
    assert (service.connection_limit, service.client_connection_limit) == (1000, 0)
    assert (settings.generic_auth, settings.generic_signature_tolerance) == ("signature", 90.0)
    assert settings.git_ls_remote_timeout == 12.5


@pytest.mark.parametrize("text, key, problem", [
    ("[service]\nheader_timeout = 0", "service.header_timeout", ">= 0.1"),
    ("[service]\nchannel_timeout = 0.5", "service.channel_timeout", ">= 1"),
    ("[service]\nconnection_limit = 0", "service.connection_limit", ">= 1"),
    ("[service]\nclient_connection_limit = -1", "service.client_connection_limit", ">= 0"),
    ('[service]\nconnection_limit = "many"', "service.connection_limit", "an integer"),
    ('[generic]\nauth = "hmac"', "generic.auth", "token, signature or either"),
    ("[generic]\nsignature_tolerance = 0", "generic.signature_tolerance", ">= 1"),
    ("[git]\nls_remote_timeout = 0", "git.ls_remote_timeout", ">= 0.1"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.key == key and problem in caught.value.problem
