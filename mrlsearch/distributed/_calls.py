"""Calls from the driver to the shard actors, supervised.

:class:`ShardCalls` owns the actors: it starts them, sends calls, waits with timeouts,
restarts an actor that died, replays the writes it missed (journalled since the shard's last
save) and retries, or raises :class:`ShardUnavailableError` naming the shard.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import exceptions as ray_errors

from .._errors import MRLError
from ._actor import RemoteShard, ShardNotLoaded

__all__: list[str] = []

#: a call retries after this many actor deaths at most, then gives up on the shard
_MAX_ATTEMPTS = 3


class ShardUnavailableError(MRLError, RuntimeError):
    """A shard did not answer: its actor died and did not come back in time, or it cannot be
    reloaded from its directory.

    Attributes
    ----------
    shard : int
        Index of the shard.
    path : str or None
        Its index directory.
    """

    def __init__(self, message: str, *, shard: int = -1, path: str | None = None) -> None:
        super().__init__(message)
        self.shard = shard
        self.path = path


@dataclass
class Shard:
    """One shard as the driver tracks it: its directory, its actor and the writes since the
    directory was saved (replayed into a fresh actor)."""

    index: int
    path: Path
    base: int = 0  # the actor version the directory holds
    journal: list = field(default_factory=list)  # writes since the directory was written
    actor: Any = None
    ready: Any = None
    restarts: int = 0
    up: bool = False  # ready() was seen to finish
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def version(self) -> int:
        return self.base + len(self.journal)


@dataclass
class Sent:
    """A call on its way to a shard's actor: what to send again if the actor dies."""

    shard: Shard
    kind: str  # 'call' or 'apply'
    name: str
    args: tuple
    kwargs: dict
    actor: Any
    ref: Any


#: How long a failed call waits for the other shards' answers before it raises.
_DROP_WAIT = 5.0


def remaining(deadline: float) -> float | None:
    """Seconds left until ``deadline`` (``time.monotonic``), None for no deadline."""
    if math.isinf(deadline):
        return None
    return max(0.0, deadline - time.monotonic())


def deadline_in(seconds: float | None) -> float:
    """The ``time.monotonic`` deadline ``seconds`` from now (inf for None)."""
    return math.inf if seconds is None else time.monotonic() + seconds


def check_timeout(value: object, name: str) -> float | None:
    """``value`` as seconds >= 0, or None; ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"'{name}' must be a number of seconds >= 0 or None (got {value!r})")
    return float(value)


class ShardCalls:
    """The shards' actors and every call to them.

    A call goes to a shard's current actor with the shard's version (the writes it must have
    applied). :meth:`resolve` waits for the answer; where the actor died it starts a new one
    from the shard's directory, replays the writes journalled since that directory was saved
    and sends the call again, at most ``_MAX_ATTEMPTS`` deaths per call, each wait bounded by
    the call's deadline and ``restart_timeout``.

    Parameters
    ----------
    shards : list of Shard
        In shard order.
    mmap : bool
        Load the shards' vectors memory-mapped.
    num_cpus : float
        CPUs each actor reserves in Ray.
    memory : int or None
        Bytes each actor reserves in Ray.
    threads : int
        Threads each shard uses for a call.
    restart_timeout : float or None
        Default bound on waiting for a restarting shard.
    """

    def __init__(self, shards: list[Shard], *, mmap: bool, num_cpus: float,
                 memory: int | None, threads: int, restart_timeout: float | None) -> None:
        self.shards = shards
        self.mmap = mmap
        self.num_cpus = num_cpus
        self.memory = memory
        self.threads = threads
        self.restart_timeout = restart_timeout
        #: writes (and saves) take turns: each shard's journal must follow the actor's order
        self.write_lock = threading.RLock()
        self.closed = False

    def close(self) -> None:
        """Stop the actors (their directories stay). Idempotent."""
        self.closed = True
        for shard in self.shards:
            if shard.actor is not None:
                try:
                    ray.kill(shard.actor)
                except Exception:  # noqa: BLE001, S110 - already gone
                    pass
                shard.actor = shard.ready = None

    def query(self, method: str, args: tuple, kwargs: dict) -> dict:
        """``method`` on every shard, waiting as long as it takes (restarts included)."""
        return self.query_each({shard.index: (method, args, kwargs) for shard in self.shards})

    def query_each(self, calls: dict[int, tuple[str, tuple, dict]]) -> dict:
        """One call per shard ``{index: (method, args, kwargs)}``; answers per shard index."""
        sent, missing = self.send_each({index: ("call", *call) for index, call in calls.items()},
                                       False)
        return self.collect(sent, missing, math.inf, self.restart_timeout, False)

    def spawn(self, shard: Shard) -> None:
        """Start an actor that loads ``shard``'s directory (``ready()`` tells when it did)."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.memory is not None:
            options["memory"] = self.memory
        shard.actor = RemoteShard.options(**options).remote(str(shard.path), self.mmap,
                                                             self.threads, shard.base)
        shard.ready = shard.actor.ready.remote()
        shard.up = False

    def restart(self, shard: Shard, dead: Any) -> None:
        """Replace the actor ``dead`` of ``shard`` with a fresh one, unless another thread did."""
        with shard.lock:
            if shard.actor is not dead and shard.actor is not None:
                return  # another thread restarted it already
            if dead is not None:
                try:
                    ray.kill(dead)
                except Exception:  # noqa: BLE001, S110 - already gone
                    pass
            self.spawn(shard)
            shard.restarts += 1

    def is_up(self, shard: Shard) -> bool:
        """Whether ``shard``'s actor finished loading (without waiting)."""
        if shard.up:
            return True
        if shard.actor is None:
            return False
        done, _ = ray.wait([shard.ready], timeout=0)
        shard.up = bool(done)
        return shard.up

    def send(self, kind: str, name: str, args: tuple, kwargs: dict, allow_partial: bool
             ) -> tuple[dict, list]:
        """The same call to every shard: (sent per shard index, shards left out)."""
        return self.send_each({shard.index: (kind, name, args, kwargs)
                               for shard in self.shards}, allow_partial)

    def send_each(self, calls: dict, allow_partial: bool) -> tuple[dict, list]:
        """One call per shard index; with ``allow_partial`` shards still loading are left out."""
        if self.closed:
            raise RuntimeError("this ShardedSearcher is closed")
        sent, missing = {}, []
        for index, (kind, name, args, kwargs) in calls.items():
            shard = self.shards[index]
            if allow_partial and not self.is_up(shard):
                if shard.actor is None:
                    self.restart(shard, None)
                missing.append(index)
                continue
            sent[index] = self.submit(shard, kind, name, args, kwargs)
        return sent, missing

    def submit(self, shard: Shard, kind: str, name: str, args: tuple, kwargs: dict) -> Sent:
        """Send one call (``kind`` 'call' or 'apply') to ``shard``'s current actor."""
        if shard.actor is None:
            self.restart(shard, None)
        actor = shard.actor
        if kind == "call":
            ref = actor.call.remote(shard.version, name, args, kwargs)
        else:
            ref = actor.apply.remote(shard.version, name, args)
        return Sent(shard, kind, name, args, kwargs, actor, ref)

    def unavailable(self, shard: Shard, why: str) -> ShardUnavailableError:
        """The error that names ``shard`` and says ``why``."""
        return ShardUnavailableError(f"shard {shard.index} ({shard.path}) {why}",
                                     shard=shard.index, path=str(shard.path))

    def collect(self, sent: dict, missing: list, deadline: float,
                restart_timeout: float | None, allow_partial: bool) -> dict:
        """Wait for every sent call, restarting and replaying where an actor died.

        When one call raises, the others' answers are still fetched (within the deadline)
        and dropped: Ray prints the error of a result nobody fetched, with its traceback,
        when its reference is freed (a bad argument fails on every shard)."""
        answers = {}
        items = list(sent.items())
        for position, (index, item) in enumerate(items):
            try:
                answer = self.resolve(item, deadline, restart_timeout, allow_partial)
            except Exception:  # not on Ctrl-C: that must not wait for the other shards
                _drop_answers([later.ref for _, later in items[position + 1:]], deadline)
                raise
            if answer is None:
                missing.append(index)
            else:
                answers[index] = answer
        return answers

    def resolve(self, item: Sent, deadline: float, restart_timeout: float | None,
                allow_partial: bool) -> tuple | None:
        """Wait for one call's answer (out, seconds, count): restart, replay and resend where
        its actor died; None where ``allow_partial`` lets the shard be left out."""
        shard = item.shard
        deaths = 0
        restart_deadline = math.inf
        while True:
            try:
                if not self.is_up(shard):
                    restart_deadline = min(deadline, deadline_in(restart_timeout))
                    try:
                        ray.get(shard.ready, timeout=remaining(restart_deadline))
                    except ray_errors.GetTimeoutError:
                        bound = "the call's timeout" if restart_timeout is None \
                            else f"{restart_timeout:g} s"
                        raise self.unavailable(
                            shard, f"is restarting and was not back within {bound}") from None
                    except ray_errors.RayTaskError as exc:
                        shard.actor = None  # the next call tries again from the directory
                        raise self.unavailable(
                            shard, f"could not be reloaded: {remote_cause(exc)}") from None
                status, version, out, seconds, count = ray.get(
                    item.ref, timeout=remaining(min(deadline, restart_deadline)))
                if status == "stale":
                    if item.kind == "apply" and version > shard.version:
                        if version == shard.version + 1 and item.name != "save":
                            return None, seconds, count  # applied; only the answer was lost
                        raise MRLError(f"shard {shard.index} ({shard.path}) is at version "
                                       f"{version}, ahead of the driver ({shard.version})")
                    self.replay(shard, item.actor, version, deadline)
                    item = self.submit(shard, item.kind, item.name, item.args, item.kwargs)
                    continue
                return out, seconds, count
            except ray_errors.GetTimeoutError:
                if allow_partial:
                    return None
                raise self.unavailable(shard, "did not answer in time") from None
            except ray_errors.ActorUnavailableError:
                # a transient network problem, not a death: try the same actor again
                if time.monotonic() > min(deadline, deadline_in(restart_timeout)):
                    raise self.unavailable(shard, "stayed unreachable") from None
                time.sleep(0.05)
                item = self.submit(shard, item.kind, item.name, item.args, item.kwargs)
            except ray_errors.RayActorError:
                deaths += 1
                self.restart(shard, item.actor)
                if allow_partial:
                    return None
                if deaths >= _MAX_ATTEMPTS:
                    raise self.unavailable(shard, f"died {deaths} times during one call"
                                            ) from None
                item = self.submit(shard, item.kind, item.name, item.args, item.kwargs)
            except ray_errors.RayTaskError as exc:
                cause = remote_cause(exc)
                if isinstance(cause, ShardNotLoaded):
                    with shard.lock:
                        if shard.actor is item.actor:
                            shard.actor = None
                    if allow_partial:
                        return None
                    raise self.unavailable(shard, f"could not be reloaded: {cause}") from None
                raise cause from None

    def replay(self, shard: Shard, actor: Any, version: int, deadline: float) -> None:
        """Apply the writes a fresh actor missed (those after the last save)."""
        with shard.lock:
            while version < shard.version:
                position = version - shard.base
                if position < 0:
                    raise MRLError(f"shard {shard.index} ({shard.path}) is at version "
                                   f"{version}, older than its directory ({shard.base})")
                op, args = shard.journal[position]
                _, version, *_ = ray.get(actor.apply.remote(version, op, args),
                                              timeout=remaining(deadline))

    def write(self, writes: dict, *, keep_going: bool = False) -> dict:
        """Apply one write per shard (in parallel); journal it; handle ``'save'``.

        Returns the errors per shard when ``keep_going``; raises the first one otherwise.
        """
        with self.write_lock:
            calls = {i: ("apply", op, args, {}) for i, (op, args) in writes.items()}
            sent, _ = self.send_each(calls, False)
            failures: dict[int, BaseException] = {}
            for index, item in sent.items():
                try:
                    self.resolve(item, math.inf, self.restart_timeout, False)
                except (ValueError, TypeError, MRLError) as exc:
                    if not keep_going:
                        for other in list(sent)[list(sent).index(index) + 1:]:
                            self.settle(sent[other])
                        raise
                    failures[index] = exc
                    continue
                self.settle(item, resolved=True)
            return failures

    def settle(self, item: Sent, resolved: bool = False) -> None:
        """Record a write that succeeded on its shard (resolving it first if needed)."""
        if not resolved:
            try:
                self.resolve(item, math.inf, self.restart_timeout, False)
            except (ValueError, TypeError, MRLError):
                return
        shard = item.shard
        if item.name == "save":
            with shard.lock:  # a restart from now on loads the new directory
                shard.path = Path(item.args[0])
                shard.base = shard.version
                shard.journal.clear()
        else:
            shard.journal.append((item.name, item.args))


def _drop_answers(refs: list, deadline: float) -> None:
    """Fetch and drop the answers of ``refs`` that arrive within :data:`_DROP_WAIT` seconds
    (and ``deadline``); their errors are not this call's."""
    if not refs:
        return
    wait = _DROP_WAIT if math.isinf(deadline) else min(_DROP_WAIT, remaining(deadline))
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait)
    for ref in ready:
        try:
            ray.get(ref, timeout=0)
        except Exception:  # noqa: BLE001, S110 - the first error is the one raised
            pass


def remote_cause(exc: BaseException) -> BaseException:
    """The exception a remote call raised, without Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
