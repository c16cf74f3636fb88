"""Artifacts and disks for real: a small tmpfs as paths.root, the real `fab`, a real nginx.

- an artifact too big for the disk is refused before anything is written;
- one that uploads but cannot unpack (the disk fills meanwhile) fails cleanly: a "disk
  full" error with host and path, history and the on-failure hook, its upload and partial
  release removed, and the next ordinary deploy succeeds with no manual step;
- an SFTP upload onto a full disk says "disk full" and leaves nothing;
- free space over SSH costs no remote command, and a deploy sends no more commands for it;
- a .war and a .zip unpack into the release dir and are served from there, through nginx;
  a war with `..` in it is refused before upload.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bluegreen import config, deploy, release
from bluegreen.errors import BluegreenError
from bluegreen.fleet import Fleet
from bluegreen.hosts import SshHost
from bluegreen.layout import Layout
from bluegreen.ledger import Ledger, Who
from bluegreen.report import Reporter
from bluegreen.run import Outcome, Run
from testkit.project import Project
from testkit.sshd import TestSshd

pytestmark = pytest.mark.integration

MiB = 1 << 20


def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                          str(where)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")


def unmount(where: Path) -> None:
    res = subprocess.run(["umount", str(where)], capture_output=True, text=True, check=False)
    if res.returncode != 0:  # something still has a file open there: detach it anyway
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.fixture
def small_disk(project: Project) -> Iterator[Path]:
    """paths.root of the project on an 8 MiB tmpfs (unmounted after the apps stop)."""
    root = project.dir / "srv"
    mount_tmpfs(root, "8m")
    try:
        yield root
    finally:
        project.stop_everything()  # their cwd and logs are on the tmpfs
        unmount(root)


def blob_tar(out: Path, name: str, blob: int) -> Path:
    """The demo app plus `blob` random bytes, as a plain tar (random bytes do not shrink)."""
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo" / "app"
    path = out / name
    with tarfile.open(path, "w") as tar:
        for arc, src, mode in (("app.py", demo / "app.py", 0o644),
                               ("bin/runner", demo / "bin" / "runner", 0o755)):
            data = src.read_bytes()
            info = tarfile.TarInfo(arc)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("VERSION")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"big\n"))
        info = tarfile.TarInfo("blob.bin")
        info.size = blob
        tar.addfile(info, io.BytesIO(os.urandom(blob)))
    return path


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if "slots" not in p.parts and p.name not in ("history.jsonl", "state.json"))


def failure_hook(project: Project) -> Path:
    marker = project.dir / "on-failure.env"
    hook = project.dir / "hooks" / "on-failure"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\nenv | grep ^BLUEGREEN_ > {marker}\n")
    hook.chmod(0o755)
    return marker


@pytest.mark.parametrize("project", ["local", "ssh"], indirect=True)
def test_an_artifact_too_big_for_the_disk_is_refused_before_anything_changes(
        project: Project, small_disk: Path, tmp_path: Path) -> None:
    project.deploy("v1")
    project.artifacts["big"] = blob_tar(tmp_path, "big.tar", 5 * MiB)  # 5 + 5 + 1 > 8
    marker = failure_hook(project)
    before = tree(small_disk)
    proc = project.deploy("big", check=False)
    assert proc.returncode == 1
    err = proc.stderr
    assert "Traceback" not in err + proc.stdout
    assert "phase=upload" in err and "not enough disk space on" in err
    assert f"{small_disk}/demo needs" in err and "MiB free" in err
    assert "nothing was changed" in err
    assert tree(small_disk) == before  # not one byte of it: no temp upload, no release dir
    st = project.status()
    assert st["history"][-1]["result"] == "failed" and st["history"][-1]["phase"] == "upload"
    assert "BLUEGREEN_FAILED_PHASE=upload" in marker.read_text()
    assert project.front_version() == "v1"


TIMEOUT_SHIM = """#!/bin/bash
# Another writer fills the disk just before bluegreen unpacks, once: it leaves {leave} bytes.
case "$*" in
  *"--no-same-owner -xf"*)
    if [ ! -e {flag} ]; then
      touch {flag}
      avail=$(( $(stat -f -c '%a*%S' {root}) ))
      head -c $(( avail - {leave} )) /dev/zero > {root}/filler
    fi ;;
esac
exec {timeout} "$@"
"""


@pytest.mark.parametrize("project", ["local"], indirect=True)
def test_an_upload_that_cannot_unpack_fails_cleanly_and_the_next_deploy_works(
        project: Project, small_disk: Path, tmp_path: Path) -> None:
    project.deploy("v1")
    big = blob_tar(tmp_path, "big.tar", 3 * MiB)  # 3 + 3 + 1 MiB margin: fits in 8
    project.artifacts["big"] = big
    checksum = release.inspect(big).checksum
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "timeout").write_text(TIMEOUT_SHIM.format(
        leave=3 * MiB // 2, flag=tmp_path / "filled", root=small_disk,
        timeout=shutil.which("timeout")))
    (shim / "timeout").chmod(0o755)
    marker = failure_hook(project)
    free_before = free_bytes(small_disk)

    proc = project.deploy("big", check=False,
                          env={"PATH": f"{shim}:{os.environ['PATH']}"})
    assert (tmp_path / "filled").exists(), "the disk was never filled: the shim did not run"
    assert proc.returncode == 1, proc.stdout
    err = proc.stderr
    assert "Traceback" not in err + proc.stdout
    assert "disk full on local" in err and "cannot unpack big.tar into" in err
    assert f"{small_disk}/demo/releases/big-{checksum[:12]}" in err
    # tar's own words: "Wrote only N of M bytes" when a block half fits, "Cannot write: No
    # space left on device" when none does (which one depends on where the disk ran out)
    assert "Wrote only" in err or "Cannot write: No space left on device" in err, err
    # what this run wrote is gone: the stored upload, the partial release, any temp upload
    arts = sorted(p.name for p in (small_disk / "demo" / "artifacts").iterdir())
    rels = sorted(p.name for p in (small_disk / "demo" / "releases").iterdir())
    assert not [a for a in arts if a.startswith((checksum, ".upload-"))], arts
    assert not [r for r in rels if r.endswith(".partial") or r.startswith("big-")], rels
    filler = (small_disk / "filler").stat().st_size
    assert free_bytes(small_disk) >= free_before - filler - 256 * 1024  # history, app log
    st = project.status()
    last = st["history"][-1]
    assert last["result"] == "failed" and last["phase"] == "upload"
    assert "disk full" in last["error"]
    assert "BLUEGREEN_FAILED_PHASE=upload" in marker.read_text()
    assert project.front_version() == "v1"
    # the other writer's file stays; the next ordinary deploy still fits and succeeds
    project.deploy("v2")
    assert project.front_version() == "v2"


def ssh_host(sshd: TestSshd, root: Path) -> SshHost:
    cfg = config.from_dict({
        "app": "demo", "start": "x", "paths": {"root": str(root)},
        "hosts": {"app": [f"127.0.0.1:{sshd.port}"]},
        "ssh": {"user": "root", "key_file": str(sshd.user_key),
                "known_hosts": str(sshd.known_hosts)}})
    return SshHost(cfg.hosts.app[0], cfg)


def test_an_sftp_upload_onto_a_full_disk_says_disk_full_and_leaves_nothing(
        sshd: TestSshd, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    mount_tmpfs(root, "2m")
    host = ssh_host(sshd, root)
    try:
        layout = Layout(host.root)
        art_path = tmp_path / "blob.bin"
        art_path.write_bytes(os.urandom(4 * MiB))
        art = release.inspect(art_path)
        host.phase = "upload"
        # ship() itself does not check first (the upload phase does): straight into ENOSPC
        with pytest.raises(BluegreenError) as err:
            release.ship(host, layout, art, "r1", "blob.bin", 5, [])
        e = err.value
        assert "disk full on" in e.what and f"{layout.artifacts}/.upload-" in e.what
        assert "Traceback" not in e.render()
        assert list((root / "demo" / "artifacts").iterdir()) == []
        assert free_bytes(root) > 1.5 * MiB  # the partial upload is gone
    finally:
        host.close()
        unmount(root)


def test_free_space_over_ssh_is_one_sftp_request_not_a_command(
        sshd: TestSshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = ssh_host(sshd, tmp_path)
    try:
        host.sftp()  # connected

        def no_commands(*a: object, **k: object) -> None:
            raise AssertionError("free_space sent a remote command")
        monkeypatch.setattr(host, "_exec", no_commands)
        got = host.free_space(str(tmp_path))
        assert got is not None and abs(got - free_bytes(tmp_path)) < 64 * MiB
        assert host.free_space(str(tmp_path / "missing")) is None
    finally:
        host.close()


@pytest.mark.parametrize("project", ["ssh", "ssh-lua"], indirect=True)
def test_a_deploy_sends_no_extra_command_for_the_disk_check(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted in-process against the loopback sshd: the check rides the SFTP session."""
    sent: list[str] = []
    real = SshHost._exec

    def counting(self: SshHost, command: str, timeout: float) -> object:
        sent.append(command)
        return real(self, command, timeout)
    monkeypatch.setattr(SshHost, "_exec", counting)
    for version in ("v1", "v2"):
        sent.clear()
        cfg = config.load(str(project.dir / "bluegreen.toml"), environ={})
        fleet = Fleet(cfg)
        report = Reporter(stream=io.StringIO())
        try:
            run = Run(cfg, fleet, Ledger(cfg, fleet, Who("tester"), report), report,
                      Outcome("deploy"))
            deploy.deploy(run, project.artifacts[version], version)
        finally:
            fleet.close()
        assert not [c for c in sent if "stat -f" in c and "unpack" not in c]
        # upload (verify + unpack + prune), stop, start: the disk check added none
        app_side = [c for c in sent if project.nginx.cmd_prefix not in c]
        assert len(app_side) == 3, [c[-120:] for c in app_side]
        # plus the switch on the same machine (here also the traffic host): one command,
        # two for the first lua install, which reloads nginx to load the new shape
        assert len(sent) <= (5 if version == "v1" and project.mode == "lua" else 4), \
            [c[-120:] for c in sent]
    project.stop_everything()


# ---------------------------------------------------------------- war and zip, served


def webapp(path: Path, text: str, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("WEB-INF/web.xml", "<web-app/>\n")
        zf.writestr("index.html", text)
        zf.writestr("health", "ok\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed here")
@pytest.mark.parametrize("project", ["local", "ssh"], indirect=True)
def test_war_and_zip_are_unpacked_and_served_from_the_release_dir(
        project: Project, tmp_path: Path) -> None:
    # the release dir is the docBase: a static server stands in for Tomcat
    project.env["BLUEGREEN__START"] = (f"{sys.executable} -m http.server {{port}} "
                                       "--bind 127.0.0.1 --directory {release}")
    project.artifacts["w1"] = webapp(tmp_path / "shop.war", "war v1\n")
    project.artifacts["z2"] = webapp(tmp_path / "shop.zip", "zip v2\n")
    project.deploy("w1")
    assert project.front().text == "war v1\n"
    st = project.status()
    rel = project.dir / "srv" / "demo" / "releases" / st["slots"]["blue"]["release"]
    assert (rel / "WEB-INF" / "web.xml").is_file() and not (rel / "shop.war").exists()
    project.deploy("z2")
    assert project.front().text == "zip v2\n"
    # a war with a member outside its root is refused before anything is sent
    project.artifacts["evil"] = webapp(tmp_path / "evil.war", "evil\n",
                                       {"../../../../tmp/bluegreen-evil": b"x"})
    arts = sorted((project.dir / "srv" / "demo" / "artifacts").iterdir())
    proc = project.deploy("evil", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "refused: member '../../../../tmp/bluegreen-evil'" in proc.stderr
    assert "phase=inspect" in proc.stderr and "nothing was uploaded" in proc.stderr
    assert sorted((project.dir / "srv" / "demo" / "artifacts").iterdir()) == arts
    assert not Path("/tmp/bluegreen-evil").exists()
    assert project.front().text == "zip v2\n"
    project.fab("rollback")
    assert project.front().text == "war v1\n"
    assert json.loads(project.fab("status", "--json").stdout)["live"] == "blue"
