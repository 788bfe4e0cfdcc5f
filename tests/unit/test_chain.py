"""ChainReload alone: its decisions with recording callables instead of an arbiter."""

import pytest

from pymaster.master.arbiter import Child
from pymaster.master.chain import ChainReload
from tests.master_fakes import lines


def child(number, pid):
    return Child("worker", number, lambda c: None, pid=pid)


class Host:
    """What the arbiter does for the chain, recorded."""

    def __init__(self):
        self.ready: set[int] = set()  # numbers of the workers that accept
        self.numbers = iter(range(10, 100))
        self.full = False
        self.spawned: list[Child] = []
        self.retired: list[tuple[int, bool]] = []  # (number, announced)

    def accepting(self, c):
        return c.number in self.ready

    def new_slot(self):
        return None if self.full else child(next(self.numbers), 0)

    def spawn(self, c):
        c.pid = 5000 + c.number
        self.spawned.append(c)

    def retire(self, c, announce):
        self.retired.append((c.number, announce))

    def step(self, chain):
        chain.step(self.accepting, self.new_slot, self.spawn)


def started(host, *victims):
    return ChainReload.start(list(victims), host.retire)


def test_start_takes_the_running_workers_only(capfd):
    host = Host()
    one, two, dead = child(1, 101), child(2, 102), child(3, 0)
    chain = started(host, one, dead, two)
    assert chain.queue == [one, two] and chain.pair == () and not chain.done
    assert lines(capfd)[0].endswith(" - chain reload starting...")


def test_each_victim_goes_only_after_its_successor_accepts(capfd):
    host = Host()
    one, two = child(1, 101), child(2, 102)
    chain = started(host, one, two)
    host.step(chain)
    (first,) = host.spawned
    assert chain.pair == (first, one)
    host.step(chain)
    host.step(chain)
    assert host.retired == [] and len(host.spawned) == 1  # waiting for number 10
    host.ready.add(10)
    host.step(chain)
    assert host.retired == [(1, True)]  # announced: "Gracefully killing worker 1 ..."
    assert [c.number for c in host.spawned] == [10, 11] and chain.pair == (host.spawned[1], two)
    host.ready.add(11)
    host.step(chain)
    assert host.retired == [(1, True), (2, True)] and chain.done and chain.pair == ()
    log = [line.split(" - ", 1)[1] for line in lines(capfd)]
    assert log == [
        "chain reload starting...",
        "chain next victim is worker 1",
        "chain: worker 10 (pid: 5010) is accepting",
        "chain next victim is worker 2",
        "chain: worker 11 (pid: 5011) is accepting",
        "chain reloading complete",
    ]


def test_a_victim_that_died_or_left_meanwhile_is_skipped():
    host = Host()
    one, two, three = child(1, 101), child(2, 102), child(3, 103)
    chain = started(host, one, two, three)
    one.pid = 0  # between an exit and its respawn
    two.retiring = True  # removed by a scale-down
    host.step(chain)
    host.step(chain)
    assert host.spawned == [] and not chain.done
    host.step(chain)
    assert [c.number for c in host.spawned] == [10] and chain.pair[1] is three


def test_no_free_slot_aborts(capfd):
    host = Host()
    host.full = True
    chain = started(host, child(1, 101))
    host.step(chain)
    assert chain.done and host.spawned == [] and host.retired == []
    assert lines(capfd)[-1].endswith(
        " - chain reload aborted: no free scoreboard slot for a successor; "
        "the old workers keep serving"
    )


@pytest.mark.parametrize(
    "code, cursed, reason",
    [
        (22, False, "the new worker 10 failed to load the app"),
        (None, False, "the new worker 10 exited before accepting"),  # killed by a signal
        (1, False, "the new worker 10 exited before accepting"),
        (0, True, "the new worker 10 exited before accepting"),  # asked to go (fifo w)
    ],
)
def test_a_successor_that_exits_without_accepting_aborts(capfd, code, cursed, reason):
    host = Host()
    old = child(1, 101)
    chain = started(host, old, child(2, 102))
    host.step(chain)
    new = host.spawned[0]
    new.pid = 0
    assert chain.on_exit(new, code, cursed) is True  # its slot is gone: no respawn
    assert chain.done and chain.queue == [] and chain.pair == ()
    assert host.retired == [(10, False)]  # the successor leaves, quietly
    assert lines(capfd)[-1].endswith(
        f" - chain reload aborted: {reason}; the old workers keep serving"
    )


def test_a_successor_that_served_and_recycled_itself_had_accepted():
    host = Host()
    old = child(1, 101)
    chain = started(host, old)
    host.step(chain)
    new = host.spawned[0]
    assert chain.on_exit(new, 0, False) is False  # it is respawned like any worker
    assert not chain.done
    new.pid = 6000  # respawned, not accepting yet: it already did
    host.step(chain)
    assert host.retired == [(1, True)] and chain.done


def test_other_exits_are_not_the_chains_business():
    host = Host()
    old, other = child(1, 101), child(2, 102)
    chain = started(host, old, other)
    host.step(chain)
    assert chain.on_exit(old, 0, False) is False  # the victim recycled itself: respawned
    assert chain.on_exit(other, 22, False) is False
    assert not chain.done and chain.pair == (host.spawned[0], old)


def test_scale_down_of_the_successor_aborts_and_retires_it(capfd):
    host = Host()
    old = child(1, 101)
    chain = started(host, old, child(2, 102))
    host.step(chain)
    new = host.spawned[0]
    chain.on_scale_down(new)
    assert chain.done and host.retired == [(10, False)]
    assert "worker 10 was removed by a scale-down" in lines(capfd)[-1]


def test_scale_down_of_the_victim_aborts_and_keeps_the_successor(capfd):
    host = Host()
    old = child(1, 101)
    chain = started(host, old, child(2, 102))
    host.step(chain)
    chain.on_scale_down(old)
    assert chain.done and host.retired == []  # the arbiter retires the victim itself
    assert "worker 1 was removed by a scale-down" in lines(capfd)[-1]


def test_scale_down_of_another_worker_changes_nothing():
    host = Host()
    old, queued = child(1, 101), child(2, 102)
    chain = started(host, old, queued)
    host.step(chain)
    chain.on_scale_down(queued)
    assert not chain.done and chain.queue == [queued] and host.retired == []


def test_abort_between_pairs_retires_nobody():
    host = Host()
    chain = started(host, child(1, 101))
    chain.abort("because")
    assert chain.done and chain.queue == [] and host.retired == []
