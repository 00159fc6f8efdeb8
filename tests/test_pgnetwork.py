"""The queue across a real network: workers on two "hosts" (two network namespaces, each joined to
this one by a veth pair with private 10.213.x.x/30 addresses) share one PostgreSQL server that
listens on this side's ends (tests/pg.py `listening`). Every job runs exactly once; a host whose
link is cut for longer than a lease kills its running commands, the other host runs those jobs
again, and no job's command ever runs on both hosts at once.

Behind QUEUECTL_STRESS=1, as root on Linux: the test makes the namespaces and veth pairs itself
(`ip netns add`, `ip link add ... type veth`) and removes them at cleanup, even after a failure.
It skips with the reason where it cannot run (not root, no `ip`, no network namespaces, no psycopg
or PostgreSQL)."""

import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest
import uuid

from tests import pg
from tests.base import DEADLINE_S, SCRIPT, HomeTestCase, wait_until

STRESS = os.environ.get("QUEUECTL_STRESS") == "1"
NET_PREFIX = "10.213"     # private, and only ever on this machine's veth pairs
HOST_VAR = "QCTL_NET_HOST"  # which "host" a command ran on: each host's worker sets it, its commands inherit it
LEASE_S = 3
HEARTBEAT_LOST = "no heartbeat reached the database"

# One run of a command, in the job's own file: "HOST PID start|tick|killed|end EPOCH" lines; a
# tick every 0.1 s, so a run that goes on shows in its file. TERM (the worker's kill) notes it.
TICKER = r"""#!/bin/sh
file=$1; ticks=$2; me="$QCTL_NET_HOST $$"
trap 'echo "$me killed $(date +%s.%N)" >> "$file"; exit 143' TERM
echo "$me start $(date +%s.%N)" >> "$file"
i=0
while [ "$i" -lt "$ticks" ]; do
    sleep 0.1
    echo "$me tick $(date +%s.%N)" >> "$file"
    i=$((i + 1))
done
echo "$me end $(date +%s.%N)" >> "$file"
"""


def _ip(*argv, check=True):
    proc = subprocess.run(("ip",) + argv, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError("ip %s: %s" % (" ".join(argv), proc.stderr.strip()))
    return proc


def _running(pid):
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@unittest.skipUnless(STRESS, "workers in two network namespaces over veth pairs: QUEUECTL_STRESS=1 (root, Linux)")
class AcrossANetworkTest(HomeTestCase):
    def database(self):
        if not (sys.platform.startswith("linux") and os.geteuid() == 0):
            self.skipTest("needs root on Linux to make network namespaces and veth pairs")
        if shutil.which("ip") is None:
            self.skipTest("no `ip` command (iproute2) to make network namespaces with")
        if importlib.util.find_spec("psycopg") is None:
            self.skipTest("psycopg 3 is not installed (pip install 'psycopg[binary]')")
        self.hosts = self.make_network()
        addresses = [host["server_address"] for host in self.hosts.values()]
        with socket.socket() as probe:  # a port free there (5432 may be a server's on every address)
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        self.server = pg.listening(",".join(addresses), hba=["host all all %s trust" % self.subnet], port=port)
        self.addCleanup(self.server.stop)
        self.schema = "t_" + uuid.uuid4().hex[:16]
        queue = "%s&schema=%s" % (self.server.url, self.schema)  # from this side: the server's socket
        previous = os.environ.get("QUEUECTL_DB")
        os.environ["QUEUECTL_DB"] = queue
        self.addCleanup(pg._restore, "QUEUECTL_DB", previous)
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        return queue

    # ------------------------------------------------------------ the network

    def make_network(self):
        """Two namespaces "a" and "b", each with one end of its own veth pair (the other end here):
        a: 10.213.N.1 (here) <-> 10.213.N.2 (in a); b: 10.213.N.5 <-> 10.213.N.6. N is one no
        address of this machine uses yet."""
        tag = uuid.uuid4().hex[:4]
        probe = "qctl-%s-probe" % tag
        proc = _ip("netns", "add", probe, check=False)
        if proc.returncode != 0:
            self.skipTest("cannot create a network namespace here: %s" % proc.stderr.strip())
        _ip("netns", "del", probe, check=False)
        taken = _ip("-o", "-4", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
        free = [n for n in range(1, 255) if "%s.%d." % (NET_PREFIX, n) not in taken]
        if not free:
            self.skipTest("every %s.N.0/24 is in use on this machine" % NET_PREFIX)
        net = "%s.%d" % (NET_PREFIX, random.choice(free))
        self.subnet = net + ".0/24"
        hosts = {}
        for name, base in (("a", 0), ("b", 4)):
            ns, here, there = "qctl-%s-%s" % (tag, name), "qh%s%s" % (tag, name), "qn%s%s" % (tag, name)
            _ip("netns", "add", ns)
            self.addCleanup(_ip, "netns", "del", ns, check=False)
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            self.addCleanup(_ip, "link", "del", here, check=False)  # gone with the namespace too; harmless
            _ip("link", "set", there, "netns", ns)
            _ip("addr", "add", "%s.%d/30" % (net, base + 1), "dev", here)
            _ip("link", "set", here, "up")
            _ip("-n", ns, "addr", "add", "%s.%d/30" % (net, base + 2), "dev", there)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", there, "up")
            hosts[name] = {"ns": ns, "link": there, "server_address": "%s.%d" % (net, base + 1),
                           "home": os.path.join(self.tmp, "host-" + name)}
        return hosts

    def cut(self, name, down=True):
        """Take host `name`'s link down (or up again), from inside its namespace."""
        _ip("-n", self.hosts[name]["ns"], "link", "set", self.hosts[name]["link"], "down" if down else "up")

    # ------------------------------------------------------------ workers and jobs

    def start_host(self, name, *args):
        """`queuectl worker start --count 2 ARGS` inside host `name`'s namespace, reaching the server
        over its veth pair, with a home of its own; killed (its whole group) at cleanup."""
        host = self.hosts[name]
        env = dict(os.environ, QUEUECTL_HOME=host["home"], **{HOST_VAR: name})
        env["QUEUECTL_DB"] = self.server.tcp_url(host["server_address"], self.schema)
        env.pop("QUEUECTL_DEBUG", None)
        log = open(os.path.join(self.tmp, "worker-%s-%d.log" % (name, time.monotonic_ns())), "w+")
        self.addCleanup(log.close)
        proc = subprocess.Popen(["ip", "netns", "exec", host["ns"], sys.executable, SCRIPT, "worker", "start",
                                 "--count", "2"] + list(args), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        proc.log = log

        def reap():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.addCleanup(reap)
        return proc

    @staticmethod
    def log_of(proc):
        proc.log.seek(0)
        return proc.log.read()

    def enqueue(self, commands):
        """Enqueue {id: command} in one batch."""
        path = os.path.join(self.tmp, "jobs-%d.jsonl" % time.monotonic_ns())
        with open(path, "w") as fh:
            fh.write("".join(json.dumps({"id": job_id, "command": command}) + "\n"
                             for job_id, command in commands.items()))
        self.ok("enqueue", "--file", path)

    def status(self):
        return json.loads(self.ok("status", "--json").stdout)

    def runs(self, job_id):
        return json.loads(self.ok("show", "--json", job_id).stdout)["runs"]

    # ------------------------------------------------------------ tests

    def test_workers_on_two_hosts_run_every_job_exactly_once(self):
        count = 2000
        marks = os.path.join(self.tmp, "marks")
        os.mkdir(marks)
        self.enqueue({"j%d" % i: 'echo "$%s" >> %s/j%d' % (HOST_VAR, marks, i) for i in range(count)})
        started = time.monotonic()
        workers = [self.start_host(name, "--drain") for name in ("a", "b")]
        for proc in workers:
            self.assertEqual(proc.wait(DEADLINE_S * 4), 0, self.log_of(proc))
        took = time.monotonic() - started
        ran = {}
        for i in range(count):
            with open(os.path.join(marks, "j%d" % i)) as fh:
                ran["j%d" % i] = fh.read().split()
        self.assertEqual([job for job, hosts in ran.items() if len(hosts) != 1], [], "jobs not run exactly once")
        by_host = {name: sum(1 for hosts in ran.values() if hosts == [name]) for name in ("a", "b")}
        self.assertEqual(sum(by_host.values()), count)
        self.assertGreater(by_host["a"], 0, by_host)  # both hosts took jobs over the network
        self.assertGreater(by_host["b"], 0, by_host)
        self.assertEqual(self.status()["jobs"]["completed"], count)
        sys.stderr.write("[%d jobs over veth in %.1fs: %.0f jobs/s; a ran %d, b %d] " % (
            count, took, count / took, by_host["a"], by_host["b"]))

    def test_a_host_cut_off_past_its_lease_kills_its_commands_and_the_other_runs_them(self):
        self.ok("config", "set", "lease-seconds", str(LEASE_S))
        self.ok("config", "set", "backoff-max", "0.1")  # a recovered job is due again at once
        ticker = os.path.join(self.tmp, "ticker.sh")
        with open(ticker, "w") as fh:
            fh.write(TICKER)
        marks = os.path.join(self.tmp, "marks")
        os.mkdir(marks)
        jobs = ["j0", "j1"]  # one for each of host a's threads
        # 6 s each: still running well past the 2/3 of a lease after which a cut-off worker kills
        self.enqueue({job: "sh %s %s/%s 60" % (ticker, marks, job) for job in jobs})

        def runs_in(job):
            """{(host, pid): [(event, time), ...]} of job's file, in order."""
            found = {}
            try:
                with open(os.path.join(marks, job)) as fh:
                    lines = fh.read().splitlines()
            except FileNotFoundError:
                return found
            for line in lines:
                host, pid, event, at = line.split()
                found.setdefault((host, int(pid)), []).append((event, float(at)))
            return found

        def running_on(name):
            return {(job, pid) for job in jobs for (host, pid), events in runs_in(job).items()
                    if host == name and events[-1][0] not in ("end", "killed")}

        a = self.start_host("a")
        cut_off = wait_until(lambda: len(running_on("a")) == 2 and running_on("a"),
                             message="host a to run both commands")
        b = self.start_host("b")  # idle, both threads free: it runs a's jobs as soon as their lease allows
        wait_until(lambda: self.status()["workers"]["processes"] == 2, message="host b's worker to register")
        self.cut("a")
        cut_at = time.monotonic()
        wait_until(lambda: HEARTBEAT_LOST in self.log_of(a), timeout=LEASE_S + DEADLINE_S,
                   message="host a to say its heartbeats no longer reach the database")
        said_at = time.monotonic() - cut_at
        # Killed: the shells (and their sleeps, same tree) are gone, with host a's link still down.
        wait_until(lambda: not any(_running(pid) for _, pid in cut_off), message="host a's commands to be killed")
        # Host b takes them once the lease is over and runs them to the end, while a is still cut off.
        wait_until(lambda: all(any(host == "b" and events[-1][0] == "end" for (host, _), events
                                   in runs_in(job).items()) for job in jobs),
                   timeout=DEADLINE_S * 2, message="host b to run host a's cut-off jobs again")
        rerun_at = time.monotonic() - cut_at
        for job in jobs:
            self.assertEqual([run["error"] for run in self.runs(job)], ["worker lost", None], job)
        self.assertEqual(self.status()["jobs"]["completed"], 2)
        self.cut("a", down=False)

        # No job's command ever ran on both hosts at once: its runs' [first, last] lines never overlap.
        margins = []
        for job in jobs:
            spans = sorted((events[0][1], events[-1][1], host, events[-1][0]) for (host, _), events
                           in runs_in(job).items())
            # a's run cut short (its last line "killed", or a tick if the KILL came before the TERM's
            # trap could write), b's to the end
            self.assertEqual([(host, last == "end") for _, _, host, last in spans], [("a", False), ("b", True)],
                             (job, spans))
            self.assertLess(spans[0][1], spans[1][0], "job %s ran on both hosts at once: %r" % (job, spans))
            margins.append(spans[1][0] - spans[0][1])

        # Host a, back on the network, carries on: with b stopped, it alone runs new jobs.
        os.killpg(b.pid, signal.SIGTERM)
        self.assertEqual(b.wait(DEADLINE_S), 0, self.log_of(b))
        self.enqueue({"after%d" % i: "true" for i in range(10)})
        wait_until(lambda: self.status()["jobs"]["completed"] == 2 + 10, timeout=DEADLINE_S * 2,
                   message="host a, reconnected, to run new jobs")
        # `worker stop` from here (through the database) reaches the worker over there.
        self.ok("worker", "stop", "--wait", "--timeout", "30")
        self.assertEqual(a.wait(DEADLINE_S), 0, self.log_of(a))
        for proc in (a, b):
            self.assertNotIn("Traceback", self.log_of(proc))
        self.assertIn("recovered from a lost worker", self.log_of(b))
        sys.stderr.write("[cut host a's link with j0, j1 running: it killed them after %.1fs, b ran them again "
                         "%.2fs later at the least, done %.1fs after the cut] " % (said_at, min(margins), rerun_at))
