"""The arbiter's decisions with a fake operating system: spawn, reap, respawn, the fork-bomb
guard, exit 22 and --need-app, signals (reload, shutdown, scaling, pause), mercy, chain
reload as the arbiter drives it, re-exec. Real processes: tests/integration/."""

import os
import signal

import pytest

from pymaster.master.arbiter import release_signals
from pymaster.workers import scoreboard as sb
from tests.master_fakes import (
    START,
    Reexec,
    accept,
    busy,
    exit_child,
    exited,
    finish_check,
    killed,
    lines,
    make_arbiter,
    reload_now,
    tick,
    worker,
)


def test_start_spawns_every_slot_with_uwsgi_lines(capfd):
    arbiter, system = make_arbiter(processes=3)
    assert system.forked == [1000, 1001, 1002]
    assert [c.pid for c in arbiter.slots] == system.forked
    assert lines(capfd) == [
        "spawned pymaster worker 1 (pid: 1000, cores: 1)",
        "spawned pymaster worker 2 (pid: 1001, cores: 1)",
        "spawned pymaster worker 3 (pid: 1002, cores: 1)",
    ]
    slot = arbiter.scoreboard.slot(0).read()
    assert slot["pid"] == 0 and slot["state"] == sb.STARTING  # reset before the fork
    assert arbiter.scoreboard.highest == 3


@pytest.mark.parametrize(
    "status, line",
    [
        (killed(9), "DAMN ! worker 1 (pid: 1000) died, killed by signal 9 :( trying respawn ..."),
        (exited(1), "DAMN ! worker 1 (pid: 1000) died :( trying respawn ..."),
        (exited(0), "worker 1 killed successfully (pid: 1000)"),  # recycled itself
    ],
)
def test_a_dead_worker_is_logged_and_respawned(capfd, status, line):
    arbiter, system = make_arbiter(processes=2)
    lines(capfd)
    exit_child(arbiter, system, worker(arbiter, 1), status)
    assert lines(capfd) == [line, "Respawned pymaster worker 1 (new pid: 1002)"]
    assert worker(arbiter, 1).pid == 1002 and worker(arbiter, 1).respawns == 2
    assert 1000 not in arbiter.children and arbiter.children[1002] is worker(arbiter, 1)


def test_a_cursed_worker_that_exits_was_killed_successfully(capfd):
    arbiter, system = make_arbiter(processes=1)
    arbiter.cmd_reload_workers()
    assert system.signals_to(1000) == [signal.SIGHUP]
    lines(capfd)
    exit_child(arbiter, system, worker(arbiter, 1), killed(signal.SIGHUP))
    assert lines(capfd) == [
        "worker 1 killed successfully (pid: 1000)",
        "Respawned pymaster worker 1 (new pid: 1001)",
    ]
    assert worker(arbiter, 1).cursed_at == 0.0  # the new process starts a fresh mercy clock


def test_strangers_are_reported_unless_the_master_is_pid_1(capfd):
    arbiter, system = make_arbiter(processes=1)
    lines(capfd)
    system.exits.extend([(77, exited(3)), (78, killed(15))])
    arbiter.reap()
    assert lines(capfd) == ["subprocess 77 exited with code 3", "subprocess 78 exited by signal 15"]
    arbiter.pid = 1
    system.exits.append((79, exited(3)))
    arbiter.reap()
    assert lines(capfd) == []


def test_forkbomb_guard_delays_the_respawn_without_sleeping(capfd):
    arbiter, system = make_arbiter(processes=2)
    lines(capfd)
    for number in (1, 2):
        exit_child(arbiter, system, worker(arbiter, number), killed(9))
    assert len(system.forked) == 4  # two respawns within the second: as many as workers
    exit_child(arbiter, system, worker(arbiter, 1), killed(9))
    assert lines(capfd)[-1] == "worker respawning too fast !!! i have to sleep a bit (2 seconds)..."
    assert len(system.forked) == 4 and worker(arbiter, 1).pid == 0
    assert worker(arbiter, 1).next_spawn == START + 2
    tick(arbiter, system, 1.0)
    assert worker(arbiter, 1).pid == 0
    tick(arbiter, system, 1.0)
    assert worker(arbiter, 1).pid == system.forked[-1] == 1004


def test_forkbomb_guard_ignores_clean_exits_and_can_be_disabled():
    arbiter, system = make_arbiter(processes=1)
    for _ in range(5):  # recycling (exit 0) is never a fork bomb
        exit_child(arbiter, system, worker(arbiter, 1), exited(0))
    assert worker(arbiter, 1).pid and len(system.forked) == 6
    arbiter, system = make_arbiter("--forkbomb-delay", "0", processes=1)
    for _ in range(5):
        exit_child(arbiter, system, worker(arbiter, 1), killed(9))
    assert worker(arbiter, 1).pid and len(system.forked) == 6


def test_exit_22_without_need_app_tries_again(capfd):
    arbiter, system = make_arbiter(processes=2)
    lines(capfd)
    exit_child(arbiter, system, worker(arbiter, 1), exited(22))
    assert lines(capfd) == [
        "OOPS ! failed loading app in worker 1 (pid 1000) :( trying again...",
        "Respawned pymaster worker 1 (new pid: 1002)",
    ]
    assert arbiter.state.mode == "running"


def test_exit_22_with_need_app_destroys_the_instance_and_exits_22(capfd):
    arbiter, system = make_arbiter("--need-app", processes=2)
    lines(capfd)
    exit_child(arbiter, system, worker(arbiter, 1), exited(22))
    assert lines(capfd) == [
        "OOPS ! failed loading app in worker 1 (pid 1000) :( trying again...",
        "need-app requested, destroying the instance...",
        "SIGINT/SIGTERM received...killing workers...",
    ]
    assert len(system.forked) == 2  # no respawn
    assert system.signals_to(1001) == [signal.SIGINT]
    assert arbiter.state.mode == "stopping" and not arbiter.state.graceful
    exit_child(arbiter, system, worker(arbiter, 2), killed(signal.SIGINT))
    assert arbiter.cycle() == 22
    assert lines(capfd)[-2:] == ["worker 2 buried after 1 seconds", "goodbye to pymaster."]


def test_sighup_reloads_gracefully_then_reexecs(capfd):
    arbiter, system = make_arbiter(processes=2)
    gateway = arbiter.add("fastrouter", lambda child: None)
    assert gateway is not None
    arbiter.spawn(gateway)
    lines(capfd)
    arbiter.queue.append(signal.SIGHUP)
    arbiter.cycle()
    assert lines(capfd) == [
        "reload requested: checking that the new configuration and app load (pid: 1003)..."
    ]
    finish_check(arbiter, system, exited(0))
    assert lines(capfd) == [
        "reload check passed",
        "...gracefully killing workers...",
        "Gracefully killing worker 1 (pid: 1000)...",
        "Gracefully killing worker 2 (pid: 1001)...",
    ]
    assert arbiter.state.mode == "reloading" and arbiter.notifier.sent == ["RELOADING"]
    assert arbiter.scoreboard.master_state == sb.MASTER_RELOADING
    assert [system.signals_to(p) for p in (1000, 1001, 1002)] == [[signal.SIGHUP]] * 3
    system.now += 3
    exit_child(arbiter, system, worker(arbiter, 1), exited(0))
    assert lines(capfd) == ["worker 1 buried after 3 seconds"]
    assert arbiter.cycle() is None  # worker 2 and the gateway are still finishing
    exit_child(arbiter, system, worker(arbiter, 2), exited(0))
    system.exits.append((gateway.pid, exited(0)))
    try:
        with pytest.raises(Reexec):
            arbiter.cycle()
    finally:
        release_signals()  # the re-exec holds them for the next image
    assert len(system.forked) == 3  # nothing respawned while reloading
    assert system.chdirs == [arbiter.start_cwd]
    (path, argv, env) = system.execs[0]
    assert argv[1:3] == ["-m", "pymaster"] and argv[3:] == arbiter.cfg.argv
    assert env["UWSGI_RELOADS"] == str(int(os.environ.get("UWSGI_RELOADS", "0")) + 1)
    assert "binary reloading pymaster..." in lines(capfd)


def test_brutal_reload_interrupts_workers_and_kills_gateways(capfd):
    arbiter, system = make_arbiter(processes=1)
    gateway = arbiter.add("fastrouter", lambda child: None)
    assert gateway is not None
    arbiter.spawn(gateway)
    lines(capfd)
    reload_now(arbiter, system, graceful=False)
    assert lines(capfd)[-2:] == ["reload check passed", "...brutally killing workers..."]
    assert system.signals_to(1000) == [signal.SIGINT]
    assert system.signals_to(1001) == [signal.SIGKILL]
    arbiter.cmd_graceful_reload()  # already reloading: ignored
    assert len(system.sent) == 2


def test_sigterm_is_a_graceful_shutdown_sigint_escalates(capfd):
    arbiter, system = make_arbiter(processes=2)
    lines(capfd)
    arbiter.queue.append(signal.SIGTERM)
    arbiter.cycle()
    assert lines(capfd)[0].endswith(" - graceful shutdown triggered...")
    assert arbiter.state.mode == "stopping" and arbiter.notifier.sent[-1] == "STOPPING"
    assert arbiter.scoreboard.master_state == sb.MASTER_STOPPING
    assert system.signals_to(1000) == [signal.SIGHUP]
    arbiter.queue.append(signal.SIGTERM)  # again: nothing new
    arbiter.cycle()
    assert system.signals_to(1000) == [signal.SIGHUP]
    arbiter.queue.append(signal.SIGINT)  # brutal after graceful: workers are interrupted
    arbiter.cycle()
    assert system.signals_to(1000) == [signal.SIGHUP, signal.SIGINT]
    assert lines(capfd) == ["SIGINT/SIGTERM received...killing workers..."]
    arbiter.queue.append(signal.SIGTERM)  # graceful after brutal: ignored
    arbiter.cycle()
    assert system.signals_to(1000) == [signal.SIGHUP, signal.SIGINT]
    for number in (1, 2):
        exit_child(arbiter, system, worker(arbiter, number), killed(signal.SIGINT))
    assert arbiter.cycle() == 0
    assert lines(capfd)[-1] == "goodbye to pymaster."
    assert len(system.forked) == 2


def test_sigttin_adds_and_sigttou_removes_the_highest_worker(capfd):
    arbiter, system = make_arbiter(processes=1)
    lines(capfd)
    arbiter.queue.extend([signal.SIGTTIN, signal.SIGTTIN])
    arbiter.cycle()
    assert lines(capfd) == [
        "adding worker 2 (now 2 workers)",
        "spawned pymaster worker 2 (pid: 1001, cores: 1)",
        "adding worker 3 (now 3 workers)",
        "spawned pymaster worker 3 (pid: 1002, cores: 1)",
    ]
    assert arbiter.cheaper.maximum == 3
    arbiter.queue.append(signal.SIGTTOU)
    arbiter.cycle()
    assert lines(capfd) == ["removing worker 3 (now 2 workers)"]
    assert system.signals_to(1002) == [signal.SIGHUP]
    assert [c.number for c in arbiter.workers()] == [1, 2]
    exit_child(arbiter, system, worker(arbiter, 3), exited(0))
    assert lines(capfd) == ["worker 3 killed successfully (pid: 1002)"]  # and no respawn
    assert [c.number for c in arbiter.slots] == [1, 2] and len(system.forked) == 3
    arbiter.on_SIGTTOU()
    arbiter.on_SIGTTOU()
    assert lines(capfd) == [
        "removing worker 2 (now 1 workers)",
        "not removing a worker: already at 1 worker (minimum 1)",
    ]


def test_sigttou_on_a_slot_waiting_for_its_respawn_drops_it_at_once(capfd):
    arbiter, system = make_arbiter(processes=3)
    for number in (1, 2, 3, 3):  # worker 3's second death is delayed by the fork-bomb guard
        exit_child(arbiter, system, worker(arbiter, number), killed(9))
    assert worker(arbiter, 3).pid == 0 and worker(arbiter, 3).next_spawn
    lines(capfd)
    arbiter.on_SIGTTOU()
    assert lines(capfd) == ["removing worker 3 (now 2 workers)"]
    assert [c.number for c in arbiter.slots] == [1, 2]
    sent = list(system.sent)
    tick(arbiter, system, 3.0)
    assert len(system.forked) == 6 and system.sent == sent  # never respawned, nothing sent


def test_mercy_expiry_kills_a_worker_that_does_not_finish(capfd):
    arbiter, system = make_arbiter(processes=1)
    reload_now(arbiter, system)
    lines(capfd)
    tick(arbiter, system, 60.0)
    assert system.signals_to(1000) == [signal.SIGHUP]  # 60 s is within the default mercy
    tick(arbiter, system, 1.0)
    assert lines(capfd) == ["worker 1 (pid: 1000) is taking too much time to die...NO MERCY !!!"]
    assert system.signals_to(1000) == [signal.SIGHUP, signal.SIGKILL]


def test_worker_reload_mercy_0_kills_at_the_next_check(capfd):
    arbiter, system = make_arbiter("--worker-reload-mercy", "0", processes=1)
    assert arbiter.mercy == 0
    reload_now(arbiter, system)
    lines(capfd)
    tick(arbiter, system, 1.0)
    assert lines(capfd) == ["worker 1 (pid: 1000) is taking too much time to die...NO MERCY !!!"]
    assert system.signals_to(1000) == [signal.SIGHUP, signal.SIGKILL]


def test_a_worker_gone_before_the_kill_is_not_an_error():
    arbiter, system = make_arbiter("--worker-reload-mercy", "1", processes=1)
    reload_now(arbiter, system)
    system.gone.add(1000)
    tick(arbiter, system, 2.0)  # the SIGKILL finds no process: nothing raised
    assert system.signals_to(1000) == [signal.SIGHUP]


def test_pause_stops_workers_and_suspends_mercy(capfd):
    arbiter, system = make_arbiter("--worker-reload-mercy", "1", processes=1)
    arbiter.cmd_reload_workers()
    arbiter.on_SIGTSTP()
    assert system.signals_to(1000) == [signal.SIGHUP, signal.SIGSTOP]
    assert lines(capfd)[-1] == "*** worker 1 suspended ***"
    tick(arbiter, system, 5.0)
    assert system.signals_to(1000) == [signal.SIGHUP, signal.SIGSTOP]  # no mercy while paused
    arbiter.on_SIGTTIN()  # a new worker is paused too
    assert system.signals_to(1001) == [signal.SIGSTOP]
    arbiter.on_SIGTSTP()
    assert arbiter.pauses[-1] == (START, START + 5.0)
    assert system.signals_to(1000)[-1] == signal.SIGCONT
    assert lines(capfd)[-2:] == ["*** worker 1 resumed ***", "*** worker 2 resumed ***"]


def test_ready_is_notified_once_every_live_worker_accepts():
    arbiter, system = make_arbiter(processes=2)
    arbiter.cycle()
    assert arbiter.notifier.sent == []
    accept(arbiter, worker(arbiter, 1))
    arbiter.cycle()
    assert arbiter.notifier.sent == []
    accept(arbiter, worker(arbiter, 2))
    arbiter.cycle()
    arbiter.cycle()
    assert arbiter.notifier.sent == ["READY pymaster is ready: 2 workers"]


def test_sigusr1_logs_the_requests_of_every_worker(capfd):
    arbiter, system = make_arbiter(processes=2)
    accept(arbiter, worker(arbiter, 1))
    slot = arbiter.scoreboard.slot(0)
    slot.begin(START, b"GET /a")
    slot.end(0.1, 10, False)
    slot.begin(START, b"GET /b")
    lines(capfd)
    arbiter.on_SIGUSR1()
    assert lines(capfd) == [
        "workers total requests: 1",
        "worker 1 app 0 [] requests: 1 exceptions: 0 busy with GET /b",
        "worker 2 app 0 [] requests: 0 exceptions: 0",
    ]


def test_a_failing_hook_is_logged_and_the_loop_goes_on(capfd):
    arbiter, system = make_arbiter(processes=1)

    def broken(now):
        raise ValueError("boom")

    arbiter.on_tick.append(broken)
    lines(capfd)
    system.now += 1
    assert arbiter.cycle() is None
    log = "\n".join(lines(capfd))
    assert "pymaster master: error in" in log and "ValueError: boom" in log


# -- chain reload, as the arbiter drives it (the ChainReload alone: test_chain.py) -------------
def chain_started(processes=2, *options):
    arbiter, system = make_arbiter(*options, processes=processes)
    for child in arbiter.workers():
        if child.pid:
            accept(arbiter, child)
    arbiter.cmd_chain_reload()
    arbiter.cycle()
    return arbiter, system


def test_chain_reload_replaces_each_worker_after_its_successor_accepts(capfd):
    arbiter, system = chain_started()
    assert [c.number for c in arbiter.slots] == [1, 2, 3]
    new = worker(arbiter, 3)
    arbiter.cycle()
    assert system.signals_to(1000) == []  # worker 3 is not accepting yet
    accept(arbiter, new)
    arbiter.cycle()
    assert system.signals_to(1000) == [signal.SIGHUP]
    assert worker(arbiter, 1).retiring
    exit_child(arbiter, system, worker(arbiter, 1), exited(0))
    assert [c.number for c in arbiter.slots] == [2, 3, 4]
    accept(arbiter, worker(arbiter, 4))
    arbiter.cycle()
    assert system.signals_to(1001) == [signal.SIGHUP]
    assert arbiter.chain is None
    log = [line.split(" - ", 1)[-1] for line in lines(capfd)]
    assert log == [
        "spawned pymaster worker 1 (pid: 1000, cores: 1)",
        "spawned pymaster worker 2 (pid: 1001, cores: 1)",
        "chain reload starting...",
        "chain next victim is worker 1",
        "spawned pymaster worker 3 (pid: 1002, cores: 1)",
        "chain: worker 3 (pid: 1002) is accepting",
        "Gracefully killing worker 1 (pid: 1000)...",
        "chain next victim is worker 2",
        "spawned pymaster worker 4 (pid: 1003, cores: 1)",
        "worker 1 killed successfully (pid: 1000)",
        "chain: worker 4 (pid: 1003) is accepting",
        "Gracefully killing worker 2 (pid: 1001)...",
        "chain reloading complete",
    ]


def test_chain_reload_aborts_when_the_successor_cannot_load_the_app(capfd):
    arbiter, system = chain_started()
    exit_child(arbiter, system, worker(arbiter, 3), exited(22))
    assert lines(capfd)[-1].endswith(
        " - chain reload aborted: the new worker 3 failed to load the app; "
        "the old workers keep serving"
    )
    assert arbiter.chain is None and [c.number for c in arbiter.slots] == [1, 2]
    assert system.sent == [] and len(system.forked) == 3  # old ones untouched, no respawn


def test_chain_reload_with_need_app_and_a_failing_successor_stops_the_instance():
    arbiter, system = chain_started(2, "--need-app")
    exit_child(arbiter, system, worker(arbiter, 3), exited(22))
    assert arbiter.state.mode == "stopping" and arbiter.state.exit_code == 22
    assert arbiter.chain is None


@pytest.mark.parametrize("status", [killed(9), exited(1)])
def test_chain_reload_aborts_when_the_successor_exits_before_accepting(capfd, status):
    arbiter, system = chain_started()
    exit_child(arbiter, system, worker(arbiter, 3), status)
    assert lines(capfd)[-1].endswith(
        " - chain reload aborted: the new worker 3 exited before accepting; "
        "the old workers keep serving"
    )
    assert arbiter.chain is None and [c.number for c in arbiter.slots] == [1, 2]
    assert len(system.forked) == 3


def test_chain_successor_that_recycles_itself_had_accepted(capfd):
    arbiter, system = chain_started()
    exit_child(arbiter, system, worker(arbiter, 3), exited(0))  # served, max-requests
    assert worker(arbiter, 3).pid == 1003  # respawned as a normal worker
    arbiter.cycle()  # the respawned one is not accepting yet: the old one goes anyway
    assert system.signals_to(1000) == [signal.SIGHUP]
    assert "chain: worker 3 (pid: 1003) is accepting" in "\n".join(lines(capfd))


def test_scale_down_during_a_chain_removes_the_successor(capfd):
    arbiter, system = chain_started(1)
    assert [c.number for c in arbiter.workers()] == [1, 2]  # old 1, new 2
    arbiter.on_SIGTTOU()
    log = lines(capfd)
    assert log[-2].endswith(
        " - chain reload aborted: worker 2 was removed by a scale-down; "
        "the old workers keep serving"
    )
    assert log[-1] == "removing worker 2 (now 1 workers)"
    assert arbiter.chain is None and not worker(arbiter, 1).retiring
    assert system.signals_to(1001)[0] == signal.SIGHUP and system.signals_to(1000) == []


def test_scale_down_during_a_chain_removes_the_old_one_and_keeps_its_successor():
    arbiter, system = chain_started(1)
    accept(arbiter, worker(arbiter, 2))
    arbiter.cycle()  # chain 1 done: worker 1 asked to go
    exit_child(arbiter, system, worker(arbiter, 1), exited(0))
    assert arbiter.chain is None and [c.number for c in arbiter.slots] == [2]
    arbiter.cmd_chain_reload()
    arbiter.cycle()  # the successor of worker 2 takes the free number 1
    old, new = worker(arbiter, 2), worker(arbiter, 1)
    assert arbiter.chain is not None and arbiter.chain.pair == (new, old)
    arbiter.on_SIGTTOU()  # both are the pair; the highest number is the old one
    assert arbiter.chain is None
    assert old.retiring and system.signals_to(old.pid) == [signal.SIGHUP]
    assert not new.retiring and system.signals_to(new.pid) == []


def test_a_reload_during_a_chain_drops_the_chain():
    arbiter, system = chain_started()
    reload_now(arbiter, system)
    assert arbiter.chain is None
    arbiter.cycle()
    assert len(system.forked) == 3  # no further successor


def test_no_cheaper_step_while_a_chain_runs():
    arbiter, system = chain_started(3, "--cheaper", "1", "--cheaper-overload", "0")
    assert [c.number for c in arbiter.slots if c.pid] == [1, 4]  # 2 and 3 are cheaped
    new = worker(arbiter, 4)
    busy(arbiter, new, START)  # every running worker busy: spare would wake one
    tick(arbiter, system)
    assert worker(arbiter, 2).pid == 0
    arbiter.cycle()  # worker 4 accepts: the chain completes, then the tick runs the cheaper
    assert arbiter.chain is None
    assert worker(arbiter, 2).pid == system.forked[-1] == 1002


# -- the reload check (master/reloadcheck.py): the new code must load before a reload ---------
CHECK_PID = 1002  # after two workers


def test_a_reload_first_checks_the_new_code_in_a_child(capfd):
    arbiter, system = make_arbiter(processes=2)
    lines(capfd)
    arbiter.queue.append(signal.SIGHUP)
    arbiter.cycle()
    [(pid, argv, env, cwd)] = system.checks
    assert pid == CHECK_PID and cwd == arbiter.start_cwd
    assert argv[1:3] == ["-m", "pymaster"] and argv[3:] == arbiter.cfg.argv
    assert env["PYMASTER_RELOAD_CHECK"] == "1"
    assert env["UWSGI_RELOADS"] == str(int(os.environ.get("UWSGI_RELOADS", "0")) + 1)
    assert (env["LISTEN_FDS"], env["LISTEN_PID"]) == ("0", str(arbiter.pid))
    assert lines(capfd) == [
        f"reload requested: checking that the new configuration and app load (pid: {pid})..."
    ]
    assert arbiter.state.mode == "running" and system.sent == []  # nobody asked to go yet
    assert arbiter.reload_check is not None and arbiter.reload_check.fd in arbiter.readers


def test_a_failed_check_keeps_the_workers_and_logs_its_output_once(capfd):
    arbiter, system = make_arbiter(processes=2)
    arbiter.on_SIGHUP()
    check = arbiter.reload_check
    assert check is not None
    lines(capfd)
    finish_check(arbiter, system, exited(1), b"unable to load app from 'app.py': boom\n")
    assert lines(capfd) == [
        f"reload check failed (pid: {CHECK_PID}, exited with code 1):",
        "unable to load app from 'app.py': boom",
        "*** reload aborted: the workers keep serving the code they loaded; fix the app or "
        "configuration and reload again ***",
    ]
    assert arbiter.state.mode == "running" and system.sent == [] and system.execs == []
    assert arbiter.reload_check is None and check.fd not in arbiter.readers
    assert arbiter.notifier.sent == ["STATUS reload failed: still serving the previous code"]
    arbiter.cycle()
    assert lines(capfd) == []  # logged once
    arbiter.on_SIGHUP()  # the next reload tries again
    assert len(system.checks) == 2 and arbiter.reload_check is not None


def test_workers_are_respawned_while_the_check_runs():
    arbiter, system = make_arbiter(processes=1)
    arbiter.on_SIGHUP()
    exit_child(arbiter, system, worker(arbiter, 1), killed(signal.SIGKILL))
    assert worker(arbiter, 1).pid == 1002  # the check took 1001
    finish_check(arbiter, system, exited(0))
    assert arbiter.state.mode == "reloading" and system.signals_to(1002) == [signal.SIGHUP]


def test_a_reload_asked_while_the_check_runs_checks_again(capfd):
    arbiter, system = make_arbiter(processes=1)
    arbiter.on_SIGHUP()
    lines(capfd)
    arbiter.cmd_brutal_reload()  # the newest request wins, brutal included
    assert lines(capfd) == [
        "reload requested while the reload check (pid: 1001) runs: checking again once it is done"
    ]
    assert len(system.checks) == 1
    finish_check(arbiter, system, exited(0))  # it checked what was there before the request
    assert len(system.checks) == 2 and arbiter.state.mode == "running" and system.sent == []
    finish_check(arbiter, system, exited(0))
    assert arbiter.state.mode == "reloading" and not arbiter.state.graceful
    assert system.signals_to(1000) == [signal.SIGINT]


def test_a_check_that_hangs_is_killed_and_the_reload_aborted(capfd):
    arbiter, system = make_arbiter(processes=1)
    arbiter.on_SIGHUP()
    tick(arbiter, system, 60.0)
    assert system.signals_to(1001) == []
    tick(arbiter, system, 1.0)
    assert system.signals_to(1001) == [signal.SIGKILL]
    lines(capfd)
    finish_check(arbiter, system, killed(signal.SIGKILL))
    assert lines(capfd)[0] == "reload check failed (pid: 1001, did not finish within 60 seconds):"
    assert arbiter.state.mode == "running" and system.signals_to(1000) == []


def test_a_shutdown_kills_a_running_check_and_reaps_it_quietly(capfd):
    arbiter, system = make_arbiter(processes=1)
    arbiter.on_SIGHUP()
    arbiter.queue.append(signal.SIGINT)
    arbiter.cycle()
    assert system.signals_to(1001) == [signal.SIGKILL] and arbiter.reload_check is None
    lines(capfd)
    system.exits.append((1001, killed(signal.SIGKILL)))
    exit_child(arbiter, system, worker(arbiter, 1), killed(signal.SIGINT))
    assert arbiter.cycle() == 0
    assert lines(capfd) == ["worker 1 buried after 1 seconds", "goodbye to pymaster."]


def test_no_reload_check_reloads_at_once(capfd):
    arbiter, system = make_arbiter("--no-reload-check", processes=1)
    lines(capfd)
    arbiter.on_SIGHUP()
    assert system.checks == [] and arbiter.state.mode == "reloading"
    assert lines(capfd)[0] == "...gracefully killing workers..."


def test_a_check_that_cannot_start_aborts_the_reload(capfd, monkeypatch):
    arbiter, system = make_arbiter(processes=1)

    def no_fork(argv, env, cwd):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(system, "spawn_check", no_fork)
    lines(capfd)
    arbiter.on_SIGHUP()
    assert lines(capfd) == [
        "*** reload aborted: cannot start the reload check: Resource temporarily unavailable ***"
    ]
    assert arbiter.state.mode == "running" and arbiter.reload_check is None
