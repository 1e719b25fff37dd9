"""gaea_nas.runtime.distributed.run_distributed: every rank waits for the others after a
finished run and before leaving the process group; a failed run discards its unsaved folder and
leaves without waiting."""
import pytest

from gaea_nas.runtime import distributed
from gaea_nas.runtime.distributed import Distributed, run_distributed


class _Run:
    def __init__(self, events, fail=False):
        self.events, self.fail = events, fail

    def run(self):
        self.events.append("run")
        if self.fail:
            raise RuntimeError("boom")
        return 7

    def discard_if_unsaved(self):
        self.events.append("discard")


@pytest.fixture
def events(monkeypatch):
    events = []
    ctx = Distributed(rank=1, world_size=2)
    monkeypatch.setattr(distributed, "init_distributed", lambda kind: ctx)
    monkeypatch.setattr(Distributed, "finish", lambda self: events.append("finish"))
    monkeypatch.setattr(Distributed, "close", lambda self: events.append("close"))
    return events


def test_a_finished_run_waits_for_every_rank_then_leaves(events):
    assert run_distributed("cpu", lambda device, ctx: _Run(events)) == 7
    assert events == ["run", "finish", "close"]


def test_a_failed_run_discards_and_leaves_without_waiting(events):
    with pytest.raises(RuntimeError, match="boom"):
        run_distributed("cpu", lambda device, ctx: _Run(events, fail=True))
    assert events == ["run", "discard", "close"]


def test_one_process_needs_no_group():
    Distributed().finish()  # no process group: nothing to wait for
    Distributed().close()
