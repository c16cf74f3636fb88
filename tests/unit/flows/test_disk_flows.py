"""A full disk, and zip/war artifacts, through the deploy flow against recording fake hosts.

Free space is checked on every app host before the first byte is sent; running out anyway
(another writer, a wrong estimate) is a clear "disk full" error with the host and the path,
the run is recorded and the on-failure hook runs like for any failure, and nothing this run
wrote is left behind, so the next deploy is no worse off.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import zipfile
from pathlib import Path

import pytest

from bluegreen import config, deploy
from bluegreen.config import Config, HostSpec
from bluegreen.errors import BluegreenError, CommandFailed
from bluegreen.hosts import Result
from bluegreen.testing import FakeHost, FakeWorld
from tests.unit.flows.test_flows import Harness

MiB = 1 << 20


class DiskHost(FakeHost):
    """A fake host with a disk: how much is free, and what running out does."""

    def __init__(self, spec: HostSpec, cfg: Config, world: FakeWorld, disk: Disk) -> None:
        super().__init__(spec, cfg, world)
        self.disk = disk

    def free_space(self, path: str) -> int | None:
        self.disk.asked.append((self.label, path))
        return self.disk.free.get(self.label)

    def put(self, local: Path, remote: str) -> None:
        fault = self.disk.put_fault.get(self.label)
        if fault is None:
            super().put(local, remote)
            return
        self.fs[remote] = local.read_bytes()[:1000]  # what got written before it ran out
        self.disk.free[self.label] = 0
        if fault == "local":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise CommandFailed(f"upload of {local} to {remote} failed: Failure", host=self.label,
                            phase=self.phase, hint="check disk space and the connection")

    def run(self, command: str, **kw: object) -> Result:
        if "-name '.upload-*'" in command and "mmin" in command and self.disk.after_clean:
            self.disk.free[self.label] = self.disk.after_clean  # stale leftovers removed
        return super().run(command, **kw)  # type: ignore[arg-type]


class Disk:
    def __init__(self) -> None:
        self.free: dict[str, int] = {}
        self.put_fault: dict[str, str] = {}
        self.after_clean = 0
        self.asked: list[tuple[str, str]] = []


def harness(tmp_path: Path, hosts: list[str] | None = None) -> tuple[Harness, Disk]:
    h = Harness(tmp_path)
    if hosts:
        raw = {"app": "demo", "start": "{release}/bin/runner {port}", "paths": {"root": "/srv"},
               "hosts": {"app": hosts, "traffic": ["local"]},
               "health": {"timeout": 0.5, "interval": 0.01},
               "nginx": {"target": "/etc/nginx/conf.d/demo.conf", "listen": "80",
                         "verify_timeout": 0.3, "drain_timeout": 0.1},
               "hooks": {"dir": str(tmp_path / "hooks")}}
        h.cfg = config.from_dict(raw)
    disk = Disk()
    world = h.world
    world.opener = lambda spec, cfg: DiskHost(spec, cfg, world, disk)  # type: ignore[method-assign]
    return h, disk


def uploads(h: Harness) -> list[str]:
    return [c for c in h.world.log if ": upload " in c]


def test_too_little_space_on_one_host_refuses_before_any_host_changes(tmp_path: Path) -> None:
    h, disk = harness(tmp_path, ["local", "app2"])
    disk.free = {"local": 500 * MiB, "app2": 64 * 1024}
    ran = h.hook("on-failure")
    with pytest.raises(BluegreenError) as err:
        h.deploy("v1")
    e = err.value
    assert e.phase == "upload" and e.host == "app2"
    assert "not enough disk space" in e.what and "/srv/demo" in e.what
    assert "needs" in e.what and "free" in e.what and "64.0 KiB free" in e.what
    assert "nothing was changed" in e.hint
    assert uploads(h) == []  # neither host got a byte, nor a directory
    assert not any("unpack" in c for c in h.world.log)
    assert not any(p.startswith("/srv/demo/artifacts") for p in h.world.files.get("app2", {}))
    last = h.history()[-1]
    assert last["result"] == "failed" and last["phase"] == "upload"
    assert "BLUEGREEN_FAILED_PHASE=upload" in ran.read_text()
    assert "/srv/demo/lock" not in h.world.files["local"]


def test_enough_space_deploys_with_no_extra_remote_command(tmp_path: Path) -> None:
    h, disk = harness(tmp_path)
    disk.free = {"local": 500 * MiB}
    h.deploy("v1")
    assert disk.asked and disk.asked[0][0] == "local"
    assert not any("stale" in c for c in h.world.log)
    assert h.state()["live"] == "blue"


def test_short_of_space_first_removes_stale_leftovers_then_checks_again(
        tmp_path: Path) -> None:
    h, disk = harness(tmp_path)
    disk.free = {"local": 10 * 1024}
    disk.after_clean = 500 * MiB  # an interrupted run's 50 MiB upload, removed
    h.deploy("v1")
    assert any("remove stale partial uploads" in c for c in h.world.log)
    assert h.state()["live"] == "blue"


@pytest.mark.parametrize("how", ["local", "sftp"])
def test_disk_full_during_upload_is_a_clear_failure_that_leaves_nothing(
        tmp_path: Path, how: str) -> None:
    h, disk = harness(tmp_path)
    h.deploy("v1")
    disk.free = {"local": 500 * MiB}
    disk.put_fault = {"local": how}
    ran = h.hook("on-failure")
    # (the fake does not run the finalizing `mv`: earlier uploads keep their temp names)
    before = {p for p in h.world.files["local"] if "/.upload-" in p}
    with pytest.raises(BluegreenError) as err:
        h.deploy("v2")
    e = err.value
    assert e.phase == "upload" and e.host == "local"
    assert "disk full" in e.what and "/srv/demo/artifacts/.upload-" in e.what
    assert {p for p in h.world.files["local"] if "/.upload-" in p} == before
    last = h.history()[-1]
    assert last["result"] == "failed" and last["phase"] == "upload"
    assert "disk full" in last["error"]
    assert "BLUEGREEN_FAILED_PHASE=upload" in ran.read_text()
    assert h.front_slot() == "blue" and h.state()["live"] == "blue"
    # the disk has room again: the very next deploy just works
    disk.put_fault, disk.free = {}, {"local": 500 * MiB}
    h.deploy("v2")
    assert h.state()["live"] == "green"


def test_disk_full_during_unpack_is_a_clear_failure_and_drops_the_fresh_upload(
        tmp_path: Path) -> None:
    h, disk = harness(tmp_path)
    h.deploy("v1")
    disk.free = {"local": 500 * MiB}
    stderr = ("tar: bin/runner: Wrote only 4608 of 10240 bytes\n"
              "tar: Exiting with failure status due to previous errors\n"
              "cannot unpack /srv/demo/artifacts/x.tar.gz into /srv/demo/releases/v2-x "
              "(exit 2, 0 bytes free)\n")
    h.world.fail_on["--no-same-owner -xf"] = stderr
    ran = h.hook("on-failure")
    with pytest.raises(BluegreenError) as err:
        h.deploy("v2")
    e = err.value
    assert e.phase == "upload" and e.host == "local"
    assert "disk full" in e.what and "/srv/demo/releases/v2-" in e.what
    assert "Wrote only" in e.what  # tar's own words stay visible
    sent = next(c for c in h.world.log if "unpack into" in c)
    assert sent  # one remote command did verify, unpack and (on failure) clean up
    last = h.history()[-1]
    assert last["result"] == "failed" and "disk full" in last["error"]
    assert ran.exists()
    del h.world.fail_on["--no-same-owner -xf"]
    h.deploy("v2")
    assert h.state()["live"] == "green"


def test_a_failed_unpack_that_is_not_about_space_keeps_its_own_words(tmp_path: Path) -> None:
    h, disk = harness(tmp_path)
    disk.free = {"local": 500 * MiB}
    h.world.fail_on["--no-same-owner -xf"] = (
        "tar: Unexpected EOF in archive\n"
        "cannot unpack /a into /b (exit 2, 123456789 bytes free)\n")
    with pytest.raises(BluegreenError) as err:
        h.deploy("v1")
    assert "disk full" not in err.value.what
    assert "cannot unpack /a into /b" in err.value.what


def war(tmp_path: Path, name: str, members: dict[str, bytes]) -> Path:
    path = tmp_path / name
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    path.write_bytes(buf.getvalue())
    return path


def test_a_bad_war_is_refused_before_the_lock_and_touches_no_host(tmp_path: Path) -> None:
    h, _ = harness(tmp_path)
    bad = war(tmp_path, "app.war", {"index.html": b"x", "../../etc/cron.d/evil": b"x"})
    with pytest.raises(BluegreenError) as err:
        deploy.deploy(h.run("deploy"), bad, "v1")
    assert err.value.phase == "inspect" and "'../../etc/cron.d/evil'" in err.value.what
    assert h.world.log == []  # not even the lock was taken


def test_a_war_needs_unzip_on_every_app_host_and_says_so_up_front(tmp_path: Path) -> None:
    h, disk = harness(tmp_path, ["local", "app2"])
    disk.free = {"local": 500 * MiB, "app2": 500 * MiB}
    good = war(tmp_path, "app.war", {"WEB-INF/web.xml": b"<web-app/>", "index.html": b"v1"})
    h.world.files.setdefault("local", {})["/usr/bin/unzip"] = b"\x7fELF"
    with pytest.raises(BluegreenError) as err:
        deploy.deploy(h.run("deploy"), good, "v1")
    assert err.value.host == "app2" and err.value.phase == "upload"
    assert "unzip" in err.value.what and "apt-get install unzip" in err.value.hint
    assert uploads(h) == []
    h.world.files.setdefault("app2", {})["/bin/unzip"] = b"\x7fELF"
    deploy.deploy(h.run("deploy"), good, "v1")
    sent = [c for c in h.world.log if "unpack into" in c]
    assert len(sent) == 2
    assert h.state()["slots"]["blue"]["artifact"] == "app.war"


def test_starting_an_unpacked_war_by_artifact_warns(tmp_path: Path) -> None:
    """A .war was placed whole before it was unpacked: `java -jar {artifact}` now names a
    file the docBase does not hold, so the deploy says so (it would fail health later)."""
    h, disk = harness(tmp_path)
    h.cfg = dataclasses.replace(h.cfg, start="java -jar {artifact} --port={port}")
    disk.free = {"local": 500 * MiB}
    h.world.files.setdefault("local", {})["/usr/bin/unzip"] = b"\x7fELF"
    good = war(tmp_path, "app.war", {"WEB-INF/web.xml": b"<web-app/>", "index.html": b"v1"})
    deploy.deploy(h.run("deploy"), good, "v1")
    assert "warning: start uses {artifact}, but app.war is unpacked" in h.out.getvalue()
