"""Before anything changes anywhere: every host reachable, every sudo rule in place.

The `connect` phase opens every host's one connection at once (at most fleet.parallel at a
time): a host that cannot be reached fails the run up front, with the list of such hosts
and why, before the lock is taken. Then, on each host type that [sudo] names, one remote
command asks sudo itself (`sudo -n -l COMMAND`, which runs nothing) whether every command
bluegreen will run there through sudo is allowed without a password, and whether the
directories bluegreen writes as that user are writable. A missing rule is named, with the
exact sudoers line to add.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from bluegreen.commands import q
from bluegreen.config import SUDO, Config, HostSpec
from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host
from bluegreen.run import Run

EXTRA_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _unsudo(command: str) -> str:
    return command[len(SUDO) + 1:] if command.startswith(SUDO + " ") else command


def sudo_rules(cfg: Config, role: str) -> list[str]:
    """The exact commands (as sudo sees them, after `sudo -n`) a host of this role runs
    through sudo: what its sudoers rule must allow."""
    rules: list[str] = []
    if role == "traffic" and "nginx" in cfg.sudo.traffic:
        nginx = _unsudo(cfg.nginx.command)
        rules += [f"{nginx} -t", f"{nginx} -s reload"]
    if role == "app" and "systemctl" in cfg.sudo.app:
        rules.append("systemctl daemon-reload")
        for slot in ("blue", "green"):
            unit = q(f"{cfg.app}@{slot}.service")
            rules += [f"systemctl {verb} {unit}"
                      for verb in ("restart", "stop", "enable", "disable")]
    if role == "app" and "supervisorctl" in cfg.sudo.app:
        ctl = f"{_unsudo(cfg.process.supervisorctl)} -c {q(cfg.process.supervisor_conf)}"
        rules.append(f"{ctl} reread")
        for slot in ("blue", "green"):
            prog = q(f"{cfg.app}-{slot}")
            rules += [f"{ctl} {verb} {prog}" for verb in ("update", "start", "stop", "status")]
    return rules


def writable_dirs(cfg: Config, spec: HostSpec, role: str) -> list[str]:
    """Directories bluegreen writes over SFTP as the SSH user on a host of this role."""
    if role == "traffic":
        parent = cfg.nginx_target.rpartition("/")[0]
        return [parent or "."]
    dirs = [cfg.root_on(spec)]
    if cfg.process.backend == "systemd":
        dirs.append(cfg.process.systemd_unit_dir)
    return dirs


def check_script(rules: Sequence[str], dirs: Sequence[str]) -> str:
    """One command: who we are, where each sudo'ed binary resolves, which rules sudo
    refuses, which directories (or, for one that does not exist yet, its nearest existing
    parent) we cannot write."""
    lines = ["command -v sudo >/dev/null 2>&1 || echo no-sudo",
             'echo "user $(id -un)"']
    binaries = list(dict.fromkeys(shlex.split(rule)[0] for rule in rules))
    for binary in binaries:
        lines.append(f"printf 'bin %s %s\\n' {q(binary)} "
                     f'"$(PATH="$PATH:{EXTRA_PATH}" command -v {q(binary)} || echo {q(binary)})"')
    for rule in rules:
        lines.append(f"sudo -n -l -- {rule} >/dev/null 2>&1 || printf 'missing %s\\n' {q(rule)}")
    for d in dirs:
        lines.append(f'd={q(d)}; while [ ! -e "$d" ] && [ "$d" != / ]; do '
                     'd=$(dirname "$d"); done; [ -w "$d" ] || echo "unwritable $d"')
    return "\n".join(lines) + "\ntrue"


@dataclass
class SudoCheck:
    user: str = ""
    no_sudo: bool = False
    binaries: dict[str, str] = field(default_factory=dict)  # as configured -> as resolved
    missing: list[str] = field(default_factory=list)  # rules sudo refuses, as configured
    unwritable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.no_sudo or self.missing or self.unwritable)

    def resolve(self, rule: str) -> str:
        """The rule with its binary as the host resolves it: what sudoers must name."""
        binary, sep, rest = rule.partition(" ")
        return self.binaries.get(binary, binary) + sep + rest


def parse_check(stdout: str) -> SudoCheck:
    out = SudoCheck()
    for line in stdout.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "no-sudo":
            out.no_sudo = True
        elif word == "user":
            out.user = rest.strip()
        elif word == "bin":
            name, _, path = rest.strip().partition(" ")
            out.binaries[name] = path.strip() or name
        elif word == "missing":
            out.missing.append(rest.strip())
        elif word == "unwritable":
            out.unwritable.append(rest.strip())
    return out


def sudoers_line(user: str, commands: Sequence[str]) -> str:
    """`deploy ALL=(root) NOPASSWD: /usr/sbin/nginx -t, /usr/sbin/nginx -s reload`.
    sudoers needs `,` `:` `=` and `\\` escaped inside a command."""
    def esc(command: str) -> str:
        return "".join("\\" + ch if ch in ",:=\\" else ch for ch in command)
    return f"{user or 'deploy'} ALL=(root) NOPASSWD: " + ", ".join(esc(c) for c in commands)


# ---------------------------------------------------------------- the phase


def _roles(cfg: Config, spec: HostSpec) -> list[str]:
    roles = []
    if spec in cfg.hosts.app:
        roles.append("app")
    if spec in cfg.traffic_hosts:
        roles.append("traffic")
    return roles


def unreachable_error(errors: Sequence[BluegreenError], total: int) -> BluegreenError:
    lines = [f"{e.host}: {e.what.splitlines()[0]}" for e in errors]
    return BluegreenError(
        f"{len(errors)} of {total} host(s) cannot be reached; nothing was changed "
        "anywhere:\n    " + "\n    ".join(lines),
        host=",".join(e.host for e in errors), phase="connect",
        # every connect error carries its own hint (hosts/ssh.py); one wording either way
        hint=f"{errors[0].hint or 'check those hosts'}; then re-run when they answer")


def sudo_error(problems: dict[str, tuple[SudoCheck, list[str]]]) -> BluegreenError:
    """One error for every host whose sudo rules or directories are not in place."""
    lines, hints = [], []
    for label, (check, rules) in problems.items():
        user = check.user or "the SSH user"
        if check.no_sudo:
            lines.append(f"{label}: sudo is not installed (needed as {user} for: "
                         f"{'; '.join(rules)})")
        for m in check.missing:
            lines.append(f"{label}: no sudo rule lets {user} run `{check.resolve(m)}` "
                         "without a password")
        for d in check.unwritable:
            lines.append(f"{label}: {user} cannot write {d}")
        if check.missing or check.no_sudo:
            line = sudoers_line(check.user, [check.resolve(r) for r in rules])
            if line not in hints:
                hints.append(line)
    hint = ""
    if hints:
        hint = ("add to /etc/sudoers.d/bluegreen on those hosts (visudo -f "
                "/etc/sudoers.d/bluegreen): " + " | ".join(hints))
    if any(c.unwritable for c, _ in problems.values()):
        hint += ("; " if hint else "") + "make those directories writable by the SSH user " \
                                         "(chown it)"
    if hint:
        hint += "; then re-run"
    return BluegreenError("sudo rules or permissions missing; nothing was changed "
                          "anywhere:\n    " + "\n    ".join(lines),
                          host=",".join(problems), phase="connect", hint=hint)


def connect(run: Run) -> None:
    """Every host reachable, every needed sudo rule allowed: or fail before the lock."""
    fleet, cfg = run.fleet, run.cfg
    specs = fleet.all_specs
    needs_sudo = {s.label: [(r, sudo_rules(cfg, r)) for r in _roles(cfg, s)] for s in specs}
    needs_sudo = {k: [(r, rules) for r, rules in v if rules] for k, v in needs_sudo.items()}
    needs_sudo = {k: v for k, v in needs_sudo.items() if v}
    if all(s.is_local for s in specs) and not needs_sudo:
        return  # this machine only: nothing to reach
    at_once = min(fleet.parallel, len(specs))
    checks: dict[str, tuple[SudoCheck, list[str]]] = {}

    def check(h: Host) -> None:
        """Right after the host's connection opened: one command asks sudo for every rule
        this host's types need (unreachable hosts are reported first, as such)."""
        if h.label not in needs_sudo:
            return
        rules = [rule for _, rs in needs_sudo[h.label] for rule in rs]
        dirs = [d for role, _ in needs_sudo[h.label] for d in writable_dirs(cfg, h.spec, role)]
        out = h.run(check_script(rules, dirs), timeout=30, mutates=False,
                    hint="check that the host answers commands over SSH").stdout
        checks[h.label] = (parse_check(out), rules)

    with run.report.phase("connect", f"{len(specs)} host(s), {at_once} at once") as note:
        errors = fleet.connect_all(then=check)
        if errors:
            raise unreachable_error(errors, len(specs))
        problems = {label: r for label, r in checks.items() if not r[0].ok}
        if problems:
            raise sudo_error(dict(sorted(problems.items())))
        if checks:
            note.text = f"sudo rules in place on {len(checks)} host(s)"
