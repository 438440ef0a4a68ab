"""SIGTERM (a TPU VM's preemption notice) turned into one step at which every process saves and stops.

    with Preemption() as preemption:
        for step in ...:
            ...train step `done`...
            if preemption.reached(done):  # the same answer on every process
                save `done`, stop

One process: a SIGTERM handler sets a flag that the next step boundary reads.

Several processes (`jax.distributed.initialize`): the notice may reach some hosts a step later than
others, or only one of them. Were each host to act on its own flag, one would enter the checkpoint
barrier while another entered the next step's collectives, and both would wait forever. JAX's preemption
sync manager, started by `jax.distributed.initialize`, listens for SIGTERM itself and agrees on a step
through the coordination service: `reached_preemption_sync_point(step)` turns true on every process at
the same step. It needs no collective in the step loop, so the host keeps dispatching ahead of the
device. No Python handler is installed then (it would replace JAX's).
"""

from __future__ import annotations

import signal

import jax


class Preemption:
    def __init__(self) -> None:
        self.requested = False  # one process: set by SIGTERM
        self._previous = None
        self._distributed = False

    def __enter__(self) -> Preemption:
        self._distributed = jax.process_count() > 1
        if not self._distributed:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether the run must save `step` and stop; called by every process once per step, with
        increasing steps."""
        if not self._distributed:
            return self.requested
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(step)
