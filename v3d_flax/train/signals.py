"""Stop requests: SIGTERM (a preemption notice) and Ctrl-C, seen between training steps."""

from __future__ import annotations

import os
import signal
import threading

import jax


class StopRequests:
    """SIGTERM (Cloud's preemption notice) and a first Ctrl-C set flags the loop checks between steps;
    a second Ctrl-C ends the process at once.

    The signals are read by a thread from Python's wakeup file descriptor, so they are seen at once
    even while the main thread waits in XLA (a Python handler would run only when that call returns).
    """

    def __init__(self):
        self.preempted = False
        self.interrupted = False
        self._previous: dict = {}
        self._read_fd = self._write_fd = None
        self._previous_fd = -1

    @property
    def requested(self) -> bool:
        """True once the run should save and stop."""
        return self.preempted or self.interrupted

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (single process, main thread only; elsewhere nothing changes)."""
        if jax.process_count() != 1 or threading.current_thread() is not threading.main_thread():
            return
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, lambda signum, frame: None)  # seen by the thread
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(self._read_fd,), daemon=True, name="v3d-signals").start()

    def _watch(self, fd: int) -> None:
        try:
            while data := os.read(fd, 64):  # empty once uninstall closes the write end
                for signum in data:
                    self._on_signal(signum)
        finally:
            os.close(fd)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.preempted = True
        elif signum == signal.SIGINT:
            if self.interrupted:
                os.write(2, b"\nsecond Ctrl-C: aborting now without saving; rerun the same command to resume "
                            b"from the last checkpoint\n")
                os._exit(130)
            self.interrupted = True
            os.write(2, b"\nCtrl-C: finishing the current step, then saving a checkpoint and exiting "
                        b"(press Ctrl-C again to abort at once)\n")

    def uninstall(self) -> None:
        """Give the signals back to their previous handlers."""
        if not self._previous:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        os.close(self._write_fd)  # the watcher thread reads end-of-file and closes its end
