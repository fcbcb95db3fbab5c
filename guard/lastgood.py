"""The last policy the kernel accepted, kept across restarts.

A node must not boot unprotected because someone saved a typo in the policy: when the configured
policy is unusable (bad YAML, or the kernel refuses it), the daemon runs the last good one, says
so loudly (log, status, metrics), and keeps retrying the configured one on every reload.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .configfile import read_private, write_atomic
from .errors import NodeguardError, PolicyError

if TYPE_CHECKING:
    from .policy.schema import Policy

log = logging.getLogger("nodeguard.run")
DEFAULT = Path("/var/lib/nodeguard/last-good.yaml")


def save(text: str, path: Path = DEFAULT) -> None:
    """Atomically, readable by root only (it describes the firewall); configfile.write_atomic."""
    write_atomic(path, text.encode(), file_mode=0o600)


def load(path: Path = DEFAULT) -> tuple[Policy, str, str] | None:
    """(policy, source, text), or None when there is none, it no longer parses, or someone other than
    root could have written it (configfile.read_private). One that no longer parses is one warning."""
    from .policy.load import parse_policy

    try:
        raw = read_private(path)
    except NodeguardError:
        return None
    try:
        text = raw.decode()
        return parse_policy(text, str(path)), str(path), text
    except (NodeguardError, UnicodeDecodeError) as exc:
        log.warning("%s: ignored as if absent: %s", path, str(exc).splitlines()[0][:200] if str(exc) else "")
        return None


def startup_policy(config: str | None, nft, log, path: Path = DEFAULT) -> tuple[Policy, str, str, str | None]:
    """The policy to start with: the configured one if it parses and the kernel accepts it, else the
    last good one. Returns (policy, source, text, why the configured one was not used).

    Only a policy that does not parse, with no last good one to fall back to, is fatal (exit 2): a
    kernel that refuses a valid policy right now (another process owns the table name, the default
    route is away for a moment) is the watcher's to retry, not a reason to leave the node unguarded."""
    from .apply import make_plan, read_state, transaction
    from .errors import BackendError, EnvironmentProblem
    from .policy.load import read_policy

    try:
        policy, source, text = read_policy(config, trusted=True)
    except PolicyError as exc:
        fallback = load(path)
        if fallback is None:
            raise
        log.error("the configured policy is unusable (%s); running the last good one from %s", exc, path)
        return (*fallback, str(exc))
    try:
        plan = make_plan(policy, nft)
        plan.backend.check(transaction(plan, read_state(plan, nft)), nft)
        return policy, source, text, None
    except (BackendError, EnvironmentProblem) as exc:
        fallback = load(path)
        if fallback is not None and isinstance(exc, BackendError):
            log.error("the kernel refused the configured policy (%s); running the last good one from %s",
                      exc, path)
            return (*fallback, str(exc))
        log.error("cannot install %s yet (%s); the watcher keeps trying", source, exc)
        return policy, source, text, None


class ConfiguredPolicy:
    """The operator's policy as a reloading daemon (``run`` or ``watch``) sees it: read at start
    (else the last good one), re-read on each reload, and saved as the last good one once the kernel
    runs it. The texts read are kept until then: what is saved is the text the kernel accepted."""

    def __init__(self, config: str | None, nft, log, good: Path = DEFAULT):
        self.config, self.nft, self.good, self.log = config, nft, good, log
        policy, self.source, text, self.fallback_why = startup_policy(config, nft, log, good)
        self.first = policy  # what the daemon starts with
        self._texts = {id(policy): text}

    def accepted(self, policy: Policy, current: Policy) -> None:
        """The watcher's ``on_good``: the kernel holds ``policy`` (``current``: the watcher's now)."""
        text = self._texts.get(id(policy))
        if text is not None:
            try:
                save(text, self.good)
            except (OSError, NodeguardError) as exc:  # the rules are in place: only the next boot's fallback is lost
                self.log.error("cannot keep the last good policy: %s", exc)
        self._texts = {k: v for k, v in self._texts.items() if k in (id(policy), id(current))}

    def reload(self, watcher, check=None) -> bool:
        """Re-read the file and hand it to ``watcher`` (which has the kernel check it first). A bad
        edit keeps the rules in place; ``check(policy)`` may refuse it too (NodeguardError)."""
        from .deny import emptied
        from .policy.load import read_policy

        try:
            new, source, text = read_policy(self.config, trusted=True)  # it may have changed hands
            if check is not None:
                check(new)
        except NodeguardError as exc:
            watcher.state["reloads_failed"] += 1
            self.log.error("reload failed: %s; the rules in place stay", exc)
            return False
        self._texts[id(new)] = text
        before = watcher.policy.deny.listed()
        if not watcher.reload(new, source):  # it logs and counts a refusal
            return False
        for path, n in emptied(before, new.deny.listed()):
            self.log.warning("deny file %s lists no prefix now: the %d it listed are no longer dropped", path, n)
        self.source, self.fallback_why = source, None
        watcher.clear_note(FALLBACK_NOTE)
        return True

    def note_fallback(self, watcher) -> None:
        if self.fallback_why:
            watcher.note(FALLBACK_NOTE, f"running the last good policy: the configured one is unusable: "
                                        f"{self.fallback_why}")


FALLBACK_NOTE = "last-good"  # the watcher's note while the configured policy is not the one running
