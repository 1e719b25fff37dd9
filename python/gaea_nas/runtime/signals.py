"""Clean stops: SIGINT/SIGTERM ask a long run to checkpoint and stop, and a test hook makes a
process signal itself after a chosen step."""
import os
import signal
import threading
from typing import Any, Dict, Optional, Tuple

__all__ = ["FAULT_ENV", "FaultInjector", "StopRequest"]

# "SIGKILL@N" (or SIGTERM/SIGINT) makes the process send itself that signal right after its
# N-th step (counted from this process's start); used by the interrupt/resume tests.
FAULT_ENV = "GAEA_FAULT_INJECT"


class StopRequest:
    """A context manager installing SIGINT/SIGTERM handlers that record the signal in
    :attr:`signum`, so the loop can checkpoint and stop at its next step; a second signal falls
    back to the previous behaviour (``KeyboardInterrupt``). Outside the main thread it
    installs nothing."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


class FaultInjector:
    """Reads :data:`FAULT_ENV` once; :meth:`step_done` sends the signal after the N-th step."""

    def __init__(self, text: Optional[str] = None):
        text = os.environ.get(FAULT_ENV) if text is None else text
        self.fault: Optional[Tuple[signal.Signals, int]] = None
        if text:
            name, _, n = text.partition("@")
            self.fault = (signal.Signals[name.strip().upper()], int(n))
        self.steps = 0

    def step_done(self) -> None:
        """Count one step; send the configured signal to this process after the N-th."""
        self.steps += 1
        if self.fault and self.steps == self.fault[1]:
            os.kill(os.getpid(), self.fault[0])
