"""A recording fake host for unit tests of the flows, in the spirit of fabric/testing.

`FakeWorld` simulates, in memory, what the flows rely on: files, app slots that start, stop
and answer health checks, and an nginx whose front door answers from the slot its installed
file (reload mode) or its shared dict (lua mode) routes to. Every change a flow makes is
logged in words, so a test can pin the exact sequence of a flow with no process and no
network, in milliseconds.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bluegreen.config import Config, HostSpec
from bluegreen.hosts import Host, Result
from bluegreen.httpwire import HttpReply
from bluegreen.render import SLOT_HEADER, front_door, parse_marker


class Killed(BaseException):
    """The deploying process died here (SIGKILL): nothing after it runs, not even cleanup."""


@dataclass
class FakeWorld:
    """Everything the fake hosts share: one file system each, one log for all."""

    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # host -> path -> bytes
    log: list[str] = field(default_factory=list)
    running: dict[tuple[str, int], str] = field(default_factory=dict)  # (host, port) -> release
    unhealthy: set[str] = field(default_factory=set)  # release ids whose /health fails
    broken: set[str] = field(default_factory=set)  # release ids whose pages all answer 500
    routed: dict[str, int] = field(default_factory=dict)  # traffic host -> live port (nginx)
    lua_live: dict[str, int] = field(default_factory=dict)  # traffic host -> zone port
    nginx_rejects: bool = False  # `nginx -t` fails
    fail_on: dict[str, str] = field(default_factory=dict)  # substring of a command -> stderr
    next_pid: int = 1000
    kill_after: str = ""  # the process dies right after the first change whose words match
    dead: bool = False

    def check_alive(self) -> None:
        if self.dead:
            raise Killed("the deploying process is gone")

    def crash(self, host: str, slot: str) -> None:
        """The app in `slot` on `host` dies: its port closes and its process is gone."""
        fs = self.files[host]
        pidfile = next(p for p in fs if p.endswith(f"/slots/{slot}/pid"))
        fs.pop(f"/proc/{fs[pidfile].split()[0].decode()}/stat", None)
        self.running = {k: v for k, v in self.running.items()
                        if not (k[0] == host and k[1] == self._ports[slot])}

    _ports: dict[str, int] = field(default_factory=lambda: {"blue": 8081, "green": 8082})

    def opener(self, spec: HostSpec, cfg: Config) -> FakeHost:
        return FakeHost(spec, cfg, self)

    def said(self, prefix: str = "") -> list[str]:
        return [line for line in self.log if line.startswith(prefix)]


class FakeHost(Host):
    def __init__(self, spec: HostSpec, cfg: Config, world: FakeWorld) -> None:
        super().__init__(spec, cfg)
        self.world = world
        self.fs = world.files.setdefault(spec.label, {})

    def _note(self, words: str) -> None:
        self.world.check_alive()
        self.world.log.append(f"{self.label}: {words}")
        if self.world.kill_after and self.world.kill_after in words:
            self.world.dead = True

    # ---------------------------------------------------------------- commands
    def run(self, command: str, *, timeout: float | None = None, check: bool = True,
            mutates: bool = True, hint: str = "", says: str = "") -> Result:
        if mutates:
            self._note(says or command.strip().splitlines()[-1][:80])
        for needle, stderr in self.world.fail_on.items():
            if needle in command:
                return self._result(command, 1, "", stderr, check, hint)
        rc, out = self._simulate(command)
        self.world.check_alive()
        return self._result(command, rc, out, "", check, hint)

    def _exec(self, command: str, timeout: float) -> Result:  # pragma: no cover - run() is
        raise AssertionError("FakeHost overrides run()")  # overridden whole

    def _result(self, command: str, rc: int, out: str, err: str, check: bool,
                hint: str) -> Result:
        if check and rc != 0:
            from bluegreen.errors import CommandFailed
            raise CommandFailed(err or f"exit {rc}", host=self.label, phase=self.phase,
                                command=command, rc=rc, hint=hint)
        return Result(command, rc, out, err)

    def _simulate(self, command: str) -> tuple[int, str]:
        cfg = self.world
        if "setsid sh -c" in command:  # plain backend start
            release = re.search(r"releases/([^ '/]+)", command)
            port = int(re.search(r"BLUEGREEN_PORT='?(\d+)", self._env_of(command)).group(1))
            cfg.running[(self.label, port)] = release.group(1) if release else "?"
            pidfile = re.search(r"mv -f (\S+)\.tmp'? (\S+pid)", command)
            pid = cfg.next_pid = cfg.next_pid + 1
            if pidfile:
                self.fs[pidfile.group(2).strip("'")] = f"{pid} 77\n".encode()
            self.fs[f"/proc/{pid}/stat"] = f"{pid} (app) S 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 " \
                f"0 0 77 0".encode()
            return 0, f"{pid}\n"
        unpacked = re.search(r"if \[ -f '?(\S+/\.bluegreen-release)'? \]", command)
        if unpacked:
            self.fs[unpacked.group(1)] = b"checksum\n"
        if "drain-left" in command or "bg_listening" in command:  # drain + stop + free
            port = int(re.search(r"bg_listening (\d+)", command).group(1))
            was = cfg.running.pop((self.label, port), None)
            for path in [p for p in self.fs if p.endswith("/pid")]:
                if f"/slots/{self._slot_of(port)}/" in path:
                    del self.fs[path]
            return 0, "drain-left 0\n" + ("stopped" if was else "none") + "\n"
        if " -t " in command or command.endswith(" -t 2>&1") or "-t 2>&1" in command:
            if cfg.nginx_rejects:
                return (10 if "exit 10" in command else 1), "nginx: [emerg] unexpected \"}\"\n"
            if "-s reload" in command:
                self._reload()
            return 0, "nginx: configuration file test is successful\n"
        if "-s reload" in command:
            self._reload()
            return 0, ""
        return 0, ""

    def _env_of(self, command: str) -> str:
        m = re.search(r"\. '?([^ ']+/env)'?", command)
        return self.fs.get(m.group(1), b"").decode() if m else ""

    def _slot_of(self, port: int) -> str:
        return "blue" if port == self.cfg.slots.blue else "green"

    def _reload(self) -> None:
        marker = parse_marker(self.fs.get(self.cfg.nginx_target, b"").decode() or None)
        if marker is None:
            self.world.routed.pop(self.label, None)
            return
        self.world.routed[self.label] = marker.port
        if self.cfg.nginx.mode == "lua":
            # the zone keeps the highest generation: a newer file wins on reload
            self.world.lua_live[self.label] = marker.port

    # ---------------------------------------------------------------- files
    def put(self, local: Path, remote: str) -> None:
        self._note(f"upload {local.name}")
        self.fs[remote] = local.read_bytes()

    def _open(self, path: str, mode: str) -> IO[bytes]:
        if "r" in mode:
            if path not in self.fs:
                raise FileNotFoundError(path)
            return io.BytesIO(self.fs[path])
        host = self

        class Writer(io.BytesIO):
            def close(self) -> None:
                old = host.fs.get(path, b"") if "a" in mode else b""
                host.fs[path] = old + self.getvalue()
                super().close()
        return Writer()

    def append_line(self, path: str, line: str) -> None:
        super().append_line(path, line)
        self._note(f"append {path.rsplit('/', 1)[-1]}")

    def mkdir_exclusive(self, path: str) -> bool:
        taken = super().mkdir_exclusive(path)
        if taken:
            self._note(f"take {path}")
        return taken

    def _mkdir(self, path: str) -> None:
        if path in self.fs:
            raise FileExistsError(path)
        self.fs[path] = b""

    def _size(self, path: str) -> int:
        if path not in self.fs:
            raise FileNotFoundError(path)
        return len(self.fs[path])

    def _rename(self, src: str, dst: str) -> None:
        self.world.check_alive()
        self.fs[dst] = self.fs.pop(src)
        if not dst.endswith((".json", ".jsonl")) or "lock/" in dst:
            self._note(f"write {dst}")
        else:
            self._note(f"write {dst.rsplit('/', 1)[-1]}")

    def _remove(self, path: str, *, directory: bool = False) -> None:
        self.world.check_alive()
        if path not in self.fs:
            raise FileNotFoundError(path)
        del self.fs[path]
        self._note(f"remove {path}")

    def _chmod(self, path: str, mode: int) -> None:
        pass

    # ---------------------------------------------------------------- http
    def http_get(self, port: int, path: str, *, timeout: float, address: str = "127.0.0.1",
                 headers: dict[str, str] | None = None, host_header: str = "localhost",
                 method: str = "GET") -> HttpReply:
        cfg, world = self.cfg, self.world
        if port == cfg.nginx.control_port and cfg.nginx.mode == "lua":
            return self._control(path, method)
        if port == front_door(cfg.nginx.listen)[1]:
            live = (world.lua_live if cfg.nginx.mode == "lua" else world.routed).get(self.label)
            if live is None:
                raise ConnectionRefusedError("nothing listens on the front door")
            slot = self._slot_of(live)
            reply = self._app(live, path)
            return HttpReply(reply.status, {SLOT_HEADER.lower(): slot}, reply.body)
        return self._app(port, path)

    def _app(self, port: int, path: str) -> HttpReply:
        release = self.world.running.get((self._app_host_label(), port))
        if release is None:
            raise ConnectionRefusedError(f"nothing listens on {port}")
        if path == self.cfg.health.path:
            return HttpReply(503 if release in self.world.unhealthy else 200)
        return HttpReply(500 if release in self.world.broken else 200)

    def _app_host_label(self) -> str:
        # traffic hosts reach the (single) app host's slots; unit tests use one app host
        return self.cfg.hosts.app[0].label if self.spec not in self.cfg.hosts.app \
            else self.label

    def _control(self, path: str, method: str) -> HttpReply:
        if self.label not in self.world.routed:
            raise ConnectionRefusedError("no lua config loaded")
        if method == "POST":
            port = int(path.split("port=")[1])
            self.world.check_alive()
            self.world.lua_live[self.label] = port
            self._note(f"set live port {port}")
        live = self.world.lua_live.get(self.label, 0)
        body = {"live": live, "gen": 0, "inflight": {}}
        return HttpReply(200, {}, json.dumps(body).encode())
