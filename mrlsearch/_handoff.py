"""Fewer sleeps on the GIL between threads that issue single queries.

A query thread holds the GIL in Python (argument checks, the result) and lets go of it in
the compiled kernel. When its kernel ends while another query thread is in its Python part,
taking the GIL back blocks, and CPython puts the thread to sleep on a condition variable; the
other thread's next release wakes it through the kernel. A sleep and a wake cost more than
a fast query (MiniLM, 14k x 384: 15 us of kernel), and the thread that was not asleep often
takes the GIL back first: two threads then served *half* the queries of one (0.5x measured).

So each query thread has a slot in :data:`SLOTS` (one per thread, for every index) that
says where it is:

* :data:`IN_PYTHON` (1) while it runs the Python of a search and holds the GIL
  (``Searcher.funnel`` sets it, and the engine again once a kernel has returned);
* a time-stamp counter reading while it returns from a kernel: it has left the kernel and is
  taking the GIL back (see :func:`kernel_leaving`);
* :data:`IN_KERNEL` (-1) while it runs a kernel;
* 0 while it waits for a writer's lock or is outside the library.

A kernel about to return spins, for at most :data:`SPIN_CYCLES`, while another thread is in
Python, or has been returning for less than :data:`RETURN_CYCLES`: by the time it takes the
GIL the other thread has usually let go of it, and no one sleeps. A thread that has been
returning for longer is asleep on the GIL, and waiting for it would only waste the spin (an
earlier version had one state for both: a thread asleep on the GIL then held the other
thread's every spin up to its whole budget). A kernel spins only while exactly one other
query thread is inside a search call: with more, the thread it waits for may be off the CPU,
preempted by the very threads that spin (four threads on two cores fell to 14-22k q/s from
48k for one, with two-thirds of the spins running their whole budget, counted). User code
outside the library never holds a slot up. Slots are written by their own thread only, so
plain (relaxed atomic) stores do.
"""

from __future__ import annotations

import itertools
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__: list[str] = []

#: The spin uses x86's time-stamp counter and ``pause``; elsewhere no thread gets a slot.
ENABLED = platform.machine().lower() in ("x86_64", "amd64")
#: Query threads that get a slot; later threads run without the handoff (as before it).
MAX_SLOTS = 64
#: One flag per query thread (see the module docstring).
SLOTS = np.zeros(MAX_SLOTS, dtype=np.int64)
#: Longest spin, in time-stamp counter cycles (~100 us at 2.6 GHz).
SPIN_CYCLES = 250_000
#: A slot's value while its thread runs a search's Python.
IN_PYTHON = 1
#: A slot's value while its thread runs a kernel.
IN_KERNEL = -1
#: How long a thread returning from a kernel counts as about to take the GIL (~50 us: taking
#: a free GIL back takes well under 1 us, waking from a sleep on it ~30 us here; a thread
#: still returning after this is asleep for longer, and waiting for it wastes the spin).
RETURN_CYCLES = 130_000
_next_slot = itertools.count()
_free_slots: list[int] = []


class SlotLease:
    """One thread's slot (``slot`` is -1 when all :data:`MAX_SLOTS` are taken), given back
    when the lease is collected: keep it in a ``threading.local``, and a thread that ends
    frees its slot for the next one."""

    __slots__ = ("slot",)

    def __init__(self) -> None:
        if not ENABLED:
            self.slot = -1
            return
        try:
            self.slot = _free_slots.pop()  # list.pop and next() are atomic under the GIL
        except IndexError:
            slot = next(_next_slot)
            self.slot = slot if slot < MAX_SLOTS else -1

    def __del__(self) -> None:
        slot, self.slot = self.slot, -1
        if slot >= 0 and _free_slots is not None:  # None while the interpreter shuts down
            SLOTS[slot] = 0
            _free_slots.append(slot)


class _ThreadSlot(threading.local):
    lease: SlotLease | None = None


_thread_slot = _ThreadSlot()


def current_slot() -> int:
    """The calling thread's slot (one per thread, shared by every index), or -1."""
    lease = _thread_slot.lease
    if lease is None:
        lease = _thread_slot.lease = SlotLease()
    return lease.slot


@contextmanager
def flag_lowered() -> Iterator[None]:
    """The calling thread's flag at 0 for the block (a wait on a lock: no Python runs), then
    back to what it was."""
    slot = current_slot()
    if slot < 0:
        yield
        return
    held = SLOTS[slot]
    SLOTS[slot] = 0
    try:
        yield
    finally:
        SLOTS[slot] = held


def _item_pointer(context, builder, sig, args):
    """Pointer to ``args[0][args[1]]`` (a 1-D array and an index) inside an intrinsic."""
    view = context.make_array(sig.args[0])(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, sig.args[0], view, [args[1]])


@intrinsic
def _load_relaxed(typingctx, array, index):
    """``array[index]`` as an atomic load: read from memory on every call, never hoisted."""
    signature = types.int64(array, types.intp)

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_item_pointer(context, builder, sig, args), "monotonic", 8)

    return signature, codegen


@intrinsic
def _store_relaxed(typingctx, array, index, value):
    """``array[index] = value`` as an atomic store."""
    signature = types.void(array, types.intp, types.int64)

    def codegen(context, builder, sig, args):
        builder.store_atomic(args[2], _item_pointer(context, builder, sig, args), "monotonic", 8)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _cycles(typingctx):
    """The time-stamp counter (``llvm.readcyclecounter``)."""
    signature = types.int64()

    def codegen(context, builder, sig, args):
        if not ENABLED:  # never reached there: no thread has a slot
            return ir.Constant(ir.IntType(64), 0)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(64), []), "llvm.readcyclecounter")
        return builder.call(function, [])

    return signature, codegen


@intrinsic
def _pause(typingctx):
    """A spin-wait hint to the CPU (x86 ``pause``)."""
    signature = types.void()

    def codegen(context, builder, sig, args):
        if ENABLED:
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(function, [])
        return context.get_dummy_value()

    return signature, codegen


@numba.njit(inline="always")
def kernel_entered(slots, slot):
    """First thing in a ``nogil`` kernel: this thread no longer needs the GIL."""
    if slot >= 0:
        _store_relaxed(slots, slot, IN_KERNEL)


@numba.njit(inline="always")
def kernel_leaving(slots, slot):
    """Last thing in a ``nogil`` kernel: wait (bounded) while the one other query thread is in
    its Python part or about to be, then mark this one as returning (the time-stamp counter).
    The caller sets the slot to :data:`IN_PYTHON` once the kernel has returned."""
    if slot < 0:
        return
    started = _cycles()
    while True:
        now = _cycles()
        if now - started >= SPIN_CYCLES:
            break
        busy = False
        others = 0
        for other in range(slots.shape[0]):
            state = _load_relaxed(slots, other)
            if other != slot and state != 0:
                others += 1
                busy |= state == IN_PYTHON or (
                    state > IN_PYTHON and abs(now - state) < RETURN_CYCLES)
        if not busy or others > 1:
            break
        _pause()
    _store_relaxed(slots, slot, max(_cycles(), IN_PYTHON + 1))
