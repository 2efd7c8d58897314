"""A clean stop on SIGTERM or SIGINT: finish the step, save a checkpoint, say how to resume.

Schedulers (Slurm, Kubernetes) and torchrun's elastic agent send SIGTERM some time before they
kill a job, and Ctrl-C sends SIGINT. Inside :class:`StopOnSignal` the first of either only sets a
flag, which the training loop reads after each optimiser step: it then writes its checkpoint
atomically and raises :class:`rwkvkit.errors.Interrupted` (the CLI prints its one line, with the
resume command, and exits with 128 + the signal number, as a shell reports a process killed by
it). The handler also puts the operating system's default action back, so a second signal ends
the process at once, even in the middle of a long operation; the atomic writes keep the last
checkpoint whole whenever that happens.

Under torchrun every process gets the signal, but not necessarily before the same step: the flag
is combined over the processes each step (:func:`StopOnSignal.requested`), so all of them stop
after the same step and write one consistent checkpoint.
"""

from __future__ import annotations

import signal
import sys
import threading

from rwkvkit.training import parallel

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """Context manager: while inside, SIGTERM / SIGINT request a stop instead of killing.

    Outside the main thread (where Python cannot install handlers) it does nothing, and signals
    keep their usual effect.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        for s in SIGNALS:  # a second signal gets the default action: the process ends at once
            signal.signal(s, signal.SIG_DFL)
        print(
            f"\n{signal.Signals(signum).name} received: stopping after this step and saving a checkpoint "
            "(send it again to quit at once, without saving)",
            file=sys.stderr,
            flush=True,
        )

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def requested(self) -> bool:
        """True once a signal arrived in this process or (under torchrun) in any other one."""

        _, world_size = parallel.world()
        if world_size == 1:
            return self.signum is not None
        # every rank calls this after every step, so the collective always matches up
        stop = parallel.all_reduce_mean(1.0 if self.signum is not None else 0.0)
        if stop > 0 and self.signum is None:
            self.signum = int(signal.SIGTERM)  # another process got it; report the usual one
        return stop > 0


def resume_hint(command: str, out_dir, world_size: int) -> str:
    """The command that continues a stopped run."""
    launcher = "torchrun (with the same options) " if world_size > 1 else ""
    return f"{launcher}rwkvkit {command} --out-dir {out_dir} --resume"
