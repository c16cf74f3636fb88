"""Lock and state through a real LocalHost on a temp dir (files only, no servers)."""

from pathlib import Path

import pytest

from bluegreen import config, lock
from bluegreen.errors import LockHeld
from bluegreen.hosts import LocalHost
from bluegreen.layout import Layout
from bluegreen.state import State, append_history, read_history, read_state, write_state


@pytest.fixture
def host(tmp_path: Path) -> LocalHost:
    cfg = config.from_dict({"app": "a", "start": "x {port}", "paths": {"root": str(tmp_path)}})
    return LocalHost(cfg.hosts.app[0], cfg)


def test_lock_is_exclusive_and_names_its_owner(host: LocalHost, tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "a"))
    alice = lock.new_owner("alice", "deploy", "https://ci/job/1/")
    lock.acquire(host, layout, alice)
    with pytest.raises(LockHeld) as err:
        lock.acquire(host, layout, lock.new_owner("bob", "deploy"))
    msg = err.value.render()
    assert "alice" in msg and "https://ci/job/1/" in msg and "fab unlock" in msg
    lock.release(host, layout, alice)
    lock.acquire(host, layout, lock.new_owner("bob", "deploy"))


def test_release_leaves_someone_elses_lock_alone(host: LocalHost, tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "a"))
    alice, bob = lock.new_owner("alice", "deploy"), lock.new_owner("bob", "deploy")
    lock.acquire(host, layout, alice)
    assert lock.break_lock(host, layout).who == "alice"  # fab unlock
    lock.acquire(host, layout, bob)
    lock.release(host, layout, alice)  # alice's deploy finally ends: must not free bob's
    assert lock.status(host, layout).who == "bob"


def test_lock_held_context_releases_on_error(host: LocalHost, tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "a"))
    with pytest.raises(RuntimeError), lock.held(host, layout, lock.new_owner("a", "deploy")):
        raise RuntimeError("boom")
    assert lock.status(host, layout) is None


def test_state_round_trip_and_serial(host: LocalHost, tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "a"))
    st = read_state(host, layout, "a")
    assert st.live == "" and st.idle == "blue"
    st.live = "green"
    st.slots["green"].release = "v2-abc"
    write_state(host, layout, st)
    write_state(host, layout, st)
    again = read_state(host, layout, "a")
    assert again.live == "green" and again.slots["green"].release == "v2-abc"
    assert again.serial == 2 and again.idle == "blue"


def test_corrupt_state_is_a_clear_error(host: LocalHost, tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "a"))
    Path(layout.root).mkdir(parents=True)
    Path(layout.state).write_text("{not json")
    with pytest.raises(Exception, match="corrupt"):
        read_state(host, layout, "a")


def test_history_reads_only_the_tail(host: LocalHost, tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "a"))
    for i in range(1000):
        append_history(host, layout, {"action": "deploy", "n": i, "pad": "x" * 200})
    last = read_history(host, layout, 5)
    assert [e["n"] for e in last] == [995, 996, 997, 998, 999]


def test_state_from_older_file_without_new_fields() -> None:
    st = State.from_json('{"app": "a", "live": "blue", "slots": {"blue": {"release": "r"}}}', "a")
    assert st.slots["green"].release == "" and st.previous_release.release == ""


def _plant(host: LocalHost, layout: Layout, owner: lock.Owner) -> None:
    host.mkdir_exclusive(layout.lock)
    host.write_atomic(f"{layout.lock}/owner.json", owner.to_json())


def test_lock_of_a_dead_process_on_this_machine_is_broken_automatically(
        host: LocalHost, tmp_path: Path) -> None:
    import subprocess
    layout = Layout(str(tmp_path / "a"))
    child = subprocess.Popen(["sleep", "0"])
    dead = lock.new_owner("killed-run", "deploy")
    dead = lock.Owner(**{**dead.__dict__, "pid": child.pid,
                         "pid_start": lock.pid_start(child.pid) or "123"})
    child.wait()
    _plant(host, layout, dead)
    broken = lock.acquire(host, layout, lock.new_owner("next", "deploy"))
    assert broken is not None and "is gone" in broken.reason and broken.owner.who == "killed-run"
    assert lock.status(host, layout).who == "next"


def test_lock_from_another_machine_is_taken_over_only_after_its_lease(
        host: LocalHost, tmp_path: Path) -> None:
    import time
    layout = Layout(str(tmp_path / "a"))
    elsewhere = lock.Owner(who="ci", action="deploy", token="t", started_at=time.time() - 900,
                           machine="another-box", pid=1, heartbeat=time.time() - 5)
    _plant(host, layout, elsewhere)
    with pytest.raises(LockHeld) as err:
        lock.acquire(host, layout, lock.new_owner("me", "deploy"), lease=60)
    assert "--lock-wait" in err.value.hint and "ci" in err.value.what
    old = lock.Owner(**{**elsewhere.__dict__, "heartbeat": time.time() - 120})
    host.write_atomic(f"{layout.lock}/owner.json", old.to_json())
    broken = lock.acquire(host, layout, lock.new_owner("me", "deploy"), lease=60)
    assert broken is not None and "heartbeat is 120s old" in broken.reason


def test_lock_wait_waits_for_a_live_holder_to_finish(host: LocalHost, tmp_path: Path) -> None:
    import threading
    layout = Layout(str(tmp_path / "a"))
    alive = lock.new_owner("first", "deploy")  # this very process: alive
    lock.acquire(host, layout, alive)
    threading.Timer(0.3, lambda: lock.release(host, layout, alive)).start()
    waited: list[str] = []
    lock.acquire(host, layout, lock.new_owner("second", "deploy"), wait=10,
                 on_wait=waited.append)
    assert waited and "first" in waited[0] and lock.status(host, layout).who == "second"


def test_heartbeat_renews_the_record_and_keeps_the_token(host: LocalHost,
                                                         tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "a"))
    me = lock.new_owner("me", "deploy")
    lock.acquire(host, layout, me)
    beat = lock.heartbeat(host, layout, me)
    on_disk = lock.status(host, layout)
    assert on_disk.token == me.token and on_disk.heartbeat == beat.heartbeat >= me.heartbeat
