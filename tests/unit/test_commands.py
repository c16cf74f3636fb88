import subprocess
import time
from pathlib import Path

from bluegreen import commands, layout
from bluegreen.layout import Layout

NASTY = "v1; touch /tmp/bluegreen-pwned $(id) `id` 'q' \"dq\""


def run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20,
                          check=False)


def test_release_id_is_stable_and_filesystem_safe() -> None:
    rid = layout.release_id(NASTY, "ab" * 32)
    assert rid == layout.release_id(NASTY, "ab" * 32)
    assert rid.endswith("-abababababab")
    assert all(c.isalnum() or c in "._-" for c in rid)
    assert layout.release_id("", "cd" * 32) == "cd" * 6


def test_tarball_detection() -> None:
    assert layout.is_tarball("app-1.2.tar.gz") and layout.is_tarball("x.TGZ")
    assert not layout.is_tarball("app.jar")
    assert layout.artifact_suffix("a.tar.xz") == ".tar.xz"


def test_env_file_values_are_data_not_code(tmp_path: Path) -> None:
    env = {"GREETING": NASTY, "EMPTY": ""}
    (tmp_path / "env").write_text(commands.env_file(env))
    out = run(f"set -a; . {tmp_path}/env; set +a; printf '%s' \"$GREETING\"")
    assert out.stdout == NASTY
    assert not Path("/tmp/bluegreen-pwned").exists()


def test_unpack_tarball_and_single_file_once(tmp_path: Path) -> None:
    art = tmp_path / "app.jar"
    art.write_bytes(b"jar bytes")
    rel = tmp_path / "releases" / "r1"
    (tmp_path / "releases").mkdir()
    first = run(commands.unpack(str(art), str(rel), "sum1", "app.jar"))
    assert first.returncode == 0 and "unpacked" in first.stdout
    assert (rel / "app.jar").read_bytes() == b"jar bytes"
    assert (rel / ".bluegreen-release").read_text().strip() == "sum1"
    again = run(commands.unpack(str(art), str(rel), "sum1", "app.jar"))
    assert again.stdout.strip() == "present"


def test_unpack_of_corrupt_tarball_fails_and_leaves_no_release(tmp_path: Path) -> None:
    art = tmp_path / "bad.tar.gz"
    art.write_bytes(b"not a tarball")
    rel = tmp_path / "r1"
    res = run(commands.unpack(str(art), str(rel), "s", "bad.tar.gz"))
    assert res.returncode != 0
    assert not rel.exists()


def test_finalize_upload_refuses_a_torn_file(tmp_path: Path) -> None:
    tmp, final = tmp_path / "up.tmp", tmp_path / "final"
    tmp.write_bytes(b"partial")
    res = run(commands.finalize_upload(str(tmp), str(final), "0" * 64))
    assert res.returncode == 3 and "checksum mismatch" in res.stderr
    assert not final.exists() and not tmp.exists()


def test_listening_and_established_helpers_see_a_real_socket() -> None:
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        assert run(commands.SHELL_LIB + f"bg_listening {port}").returncode == 0
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        assert run(commands.SHELL_LIB + f"bg_established {port}").stdout.strip() == "1"
        cli.close()
        conn.close()
    finally:
        srv.close()
    assert run(commands.SHELL_LIB + f"bg_listening {port}").returncode != 0


def test_drain_stop_free_refuses_a_foreign_holder_and_reports_cut_connections() -> None:
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    try:
        res = run(commands.drain_stop_free(port, 0.2, "echo none", 0.2))
    finally:
        for s in (cli, conn, srv):
            s.close()
    assert "drain-left 1" in res.stdout and "none" in res.stdout
    assert res.returncode == 7
    assert "did not start" in res.stderr


def test_plain_stop_never_signals_a_pid_it_did_not_start(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    (tmp_path / "slots" / "blue").mkdir(parents=True)
    victim = subprocess.Popen(["sleep", "30"])
    try:
        # right pid, wrong start time: a recycled pid must be left alone
        Path(layout.pidfile("blue")).write_text(f"{victim.pid} 1\n")
        res = run(commands.plain_stop(layout, "blue", 1))
        assert res.stdout.strip() == "gone"
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def running(layout: Layout, slot: str) -> bool:
    from bluegreen.process import pid_is_ours

    text = Path(layout.pidfile(slot)).read_text() if Path(layout.pidfile(slot)).exists() else ""
    pid = text.split()[0] if text.split() else "0"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        stat = ""
    return pid_is_ours(text, stat)


def test_plain_start_then_stop_round_trip(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    rel = tmp_path / "releases" / "r1"
    rel.mkdir(parents=True)
    (tmp_path / "slots" / "green").mkdir(parents=True)
    Path(f"{layout.slot_dir('green')}/env").write_text(commands.env_file({"MSG": NASTY}))
    res = run(commands.plain_start(layout, "green", str(rel), 'echo "$MSG"; exec sleep 30'))
    assert res.returncode == 0, res.stderr
    assert running(layout, "green")
    stop = run(commands.plain_stop(layout, "green", 5))
    assert stop.stdout.strip() == "stopped"
    assert not running(layout, "green")
    assert NASTY in Path(layout.logfile("green")).read_text()


def test_plain_stop_kills_after_timeout_when_term_is_ignored(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    (tmp_path / "slots" / "blue").mkdir(parents=True)
    Path(f"{layout.slot_dir('blue')}/env").write_text("")
    ready = tmp_path / "trap-set"
    run(commands.plain_start(layout, "blue", str(tmp_path),
                             f"trap '' TERM; touch {ready}; while :; do sleep 0.1; done"))
    # TERM must find the trap in place: on a busy machine the shell may not have got there
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    res = run(commands.plain_stop(layout, "blue", 0.3))
    assert res.stdout.strip() == "killed"


def test_prune_keeps_newest_and_protected(tmp_path: Path) -> None:
    import os
    import time

    layout = Layout(str(tmp_path))
    for i in range(6):
        d = Path(layout.release(f"r{i}"))
        d.mkdir(parents=True)
        (d / ".bluegreen-release").write_text(f"sum{i}\n")
        os.utime(d, (time.time() + i, time.time() + i))
    Path(layout.artifacts).mkdir()
    for i in range(6):
        (Path(layout.artifacts) / f"sum{i}.tar.gz").write_text("x")
    out = run(commands.prune_releases(layout, 3, ["r0"])).stdout
    assert sorted(out.split()) == ["pruned", "pruned", "r1", "r2"]
    left = sorted(p.name for p in Path(layout.releases).iterdir())
    assert left == ["r0", "r3", "r4", "r5"]
    arts = sorted(p.name for p in Path(layout.artifacts).iterdir())
    assert arts == ["sum0.tar.gz", "sum3.tar.gz", "sum4.tar.gz", "sum5.tar.gz"]


def test_drain_stop_free_with_zero_drain_does_not_count_connections() -> None:
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    srv.close()  # the port is free again; only an idle pooled connection stays open
    try:
        res = run(commands.drain_stop_free(port, 0, "echo stopped", 0.2))
    finally:
        cli.close()
        conn.close()
    assert res.returncode == 0, res.stderr
    assert "drain-left" not in res.stdout and "stopped" in res.stdout


def test_refused_channel_noise_is_filtered_but_other_paramiko_errors_are_not() -> None:
    import logging

    from bluegreen.runner import _quiet_refused_channels

    def rec(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("paramiko.transport", logging.ERROR, "", 0, msg, args, None)
    assert not _quiet_refused_channels(rec("Secsh channel %d open FAILED: %s: %s", 3,
                                           "Connection refused", "Connect failed"))
    assert _quiet_refused_channels(rec("Socket exception: Connection reset by peer"))


def test_health_probes_never_exceed_the_configured_rate_even_when_refused() -> None:
    from bluegreen import config, health
    cfg = config.from_dict({"app": "a", "start": "x {port}"}).health
    refused = health.Probe(False, "connection refused")
    interval = health.MIN_INTERVAL
    for _ in range(10):
        interval = health.next_interval(interval, refused, cfg)
    assert interval == cfg.interval == 0.05  # 20 probes/s at most, as documented
