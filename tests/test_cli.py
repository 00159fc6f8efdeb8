"""The CLI contract (every command but worker, wait, logs, stats and dashboard): in-process
through `main(argv)`, plus a few real subprocesses where exit codes and stderr are the point."""

import contextlib
import io
import json
import os
import re
import stat
import sys
import time
import unittest
from unittest import mock

import queuectl
from qctl import __version__
from qctl import home as qhome
from qctl import config as qconfig
from qctl import jobs
from qctl.db import Store
from tests.base import HomeTestCase, add_job, retry_in, run_next

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SPEC_JOB_KEYS = {"id", "command", "state", "attempts", "max_retries", "priority", "run_at", "timeout", "created_at",
                 "updated_at", "next_run_at", "last_error", "exit_code"}
RUN_KEYS = {"attempt", "started_at", "finished_at", "duration", "exit_code", "error", "worker", "run"}
SECRET = "s3cret-value-%d" % os.getpid()


class CliTestCase(HomeTestCase):
    def fails(self, *argv, code=1, message=None, **kwargs):
        """Run a command that must fail with one `queuectl: error:` line and print nothing on stdout."""
        result = self.cli(*argv, **kwargs)
        self.assertEqual(result.code, code, result)
        self.assertEqual(result.stdout, "", result)
        lines = result.stderr.splitlines()
        if code == 1:
            self.assertEqual(len(lines), 1, result)
            self.assertTrue(lines[0].startswith("queuectl: error: "), result)
        else:  # argparse: a usage line, then "queuectl CMD: error: ..."
            self.assertTrue(lines[0].startswith("usage: queuectl"), result)
            self.assertRegex(lines[-1], r"^queuectl( [a-z]+)*: error: ")
        if message is not None:
            self.assertRegex(lines[-1], message)
        return lines[-1]

    def json_of(self, *argv):
        return json.loads(self.ok(*(argv + ("--json",))).stdout)

    def ids(self, state=None):
        argv = ("list", "--limit", "0") + (("--state", state) if state else ())
        return [job["id"] for job in self.json_of(*argv)]

    def make_dead(self, job_id, error="exit code 3"):
        # Top priority, so the claim below takes this job and no other.
        self.ok("enqueue", json.dumps({"id": job_id, "command": "false", "max_retries": 0,
                                       "priority": jobs.PRIORITY_LIMIT}))
        with Store(self.db_path) as store:
            run_next(store, job_id, start=time.time(), end=time.time(), error=error, exit_code=3)

    def make_processing(self, job_id):
        self.ok("enqueue", "--id", job_id, "--command", "sleep 1", "--priority", jobs.PRIORITY_LIMIT)
        with Store(self.db_path) as store:
            self.assertEqual(store.claim("w-test", 30, now=time.time())["id"], job_id)


class EnqueueTest(CliTestCase):
    def test_json_form_prints_the_id(self):
        self.assertEqual(self.ok("enqueue", '{"id": "job1", "command": "echo hello"}').stdout, "job1\n")
        generated = self.ok("enqueue", '{"command": "echo hello"}').stdout.strip()
        self.assertRegex(generated, r"^[0-9a-f]{16}$")
        self.assertEqual(self.ids(), ["job1", generated])

    def test_json_output_is_the_stored_job(self):
        job = self.json_of("enqueue", '{"id": "j", "command": "echo hi", "priority": 2, "timeout": "1m"}')
        self.assertLessEqual(SPEC_JOB_KEYS, set(job))
        self.assertEqual((job["id"], job["command"], job["state"], job["attempts"], job["max_retries"],
                          job["priority"], job["timeout"], job["last_error"], job["exit_code"]),
                         ("j", "echo hi", "pending", 0, 3, 2, 60.0, None, None))
        for key in ("run_at", "created_at", "updated_at", "next_run_at"):
            self.assertRegex(job[key], ISO_Z)

    def test_options_form(self):
        out = self.ok("enqueue", "--command", "sleep 2", "--id", "opt", "--max-retries", "5", "--priority", "-3",
                      "--delay", "30s", "--timeout", "2m", "--cwd", self.tmp, "--env", "A=1", "--env", "B=x=y")
        self.assertEqual(out.stdout, "opt\n")
        row = self.job("opt")
        self.assertEqual((row["command"], row["max_retries"], row["priority"], row["timeout"], row["cwd"]),
                         ("sleep 2", 5, -3, 120.0, self.tmp))
        self.assertAlmostEqual(row["run_at"] - row["created_at"], 30, delta=0.01)
        self.assertEqual(json.loads(row["env"]), {"A": "1", "B": "x=y"})
        self.ok("enqueue", "--command", "x", "--id", "at", "--run-at", "2030-01-01T00:00:00Z")
        self.assertEqual(self.job("at")["run_at"], 1893456000.0)

    def test_options_form_errors(self):
        self.fails("enqueue", "--command", "x", "--max-retries", "many", code=2, message="invalid int value")
        self.fails("enqueue", "--command", "x", "--run-at", "2030-01-01", "--delay", "5", code=2,
                   message="not allowed with argument")
        self.fails("enqueue", "--command", "x", "--max-retries", "-1", message="max_retries must be between 0")
        self.fails("enqueue", "--command", "x", "--timeout", "0", message="timeout must be more than 0")
        self.fails("enqueue", "--command", "x", "--delay", "soon", message="delay must be")
        self.fails("enqueue", "--command", "x", "--run-at", "next week", message="run_at must be an ISO 8601")
        self.fails("enqueue", "--command", "x", "--env", "NOEQUALS", message="--env takes KEY=VALUE")
        self.fails("enqueue", "--command", "", message="command must not be empty")
        self.fails("enqueue", '{"command": "x"}', "--priority", "1", code=2, message="--priority goes with a command")
        self.fails("enqueue", code=2, message="give exactly one of")
        self.fails("enqueue", '{"command": "x"}', "--command", "y", code=2, message="give exactly one of")
        self.fails("enqueue", "--comm", "x", code=2)  # no abbreviations
        self.assertEqual(self.ids(), [])

    def test_validation_errors_store_nothing(self):
        cases = [
            ('{"command": "x", "colour": "red"}', r"unknown job field 'colour' \(valid fields: id, command"),
            ('{"command": 42}', "command must be a string, not the number 42"),
            ('{"command": "x", "max_retries": "3"}', "max_retries must be an integer"),
            ('{"command": "x", "priority": 1.5}', "priority must be an integer"),
            ('{"command": "x", "env": {"K": 1}}', "env value of 'K' must be a string"),
            ('{"command": "x", "timeout": NaN}', "NaN is not a number JSON allows"),
            ('{"command": "x", "timeout": Infinity}', "Infinity is not a number JSON allows"),
            ('{"command": "x", "priority": -Infinity}', "-Infinity is not a number JSON allows"),
            ('{"command": "x", "timeout": 1e999}', "timeout must be at most"),
            ('{"command": "x", "timeout": 1%s}' % ("0" * 400), "timeout must be at most"),
            ('{"command": "x", "run_at": "2026-02-30T00:00:00Z"}', "run_at must be an ISO 8601"),
            ('{"command": "x", "run_at": "yesterday"}', "run_at must be an ISO 8601"),
            ('{"command": "x", "run_at": 1700000000}', "run_at must be an ISO 8601 timestamp string"),
            ('{"command": "x", "id": "a\\nb"}', "control characters"),
            ('{"command": "x", "id": "%s"}' % ("i" * 201), "at most 200 characters"),
            ('{"command": "echo \\udcff"}', "command is not valid Unicode text"),
            ('{"command": ""}', "command must not be empty"),
            ('{"id": "x"}', "needs a 'command'"),
            ('{"command": "x"', "not valid JSON"),
        ]
        for text, message in cases:
            with self.subTest(job=text[:50]):
                self.fails("enqueue", text, message=message)
        self.assertEqual(self.ids(), [])

    def test_duplicate_id_is_refused(self):
        self.ok("enqueue", '{"id": "dup", "command": "echo 1"}')
        self.fails("enqueue", '{"id": "dup", "command": "echo 2"}', message="a job with id 'dup' already exists")
        self.fails("enqueue", "--command", "echo 3", "--id", "dup", message="already exists")
        self.assertEqual(self.job("dup")["command"], "echo 1")

    def test_default_max_retries_follows_config(self):
        self.ok("config", "set", "max_retries", "7")
        self.ok("enqueue", '{"id": "a", "command": "x"}')
        self.ok("enqueue", '{"id": "b", "command": "x", "max_retries": 0}')
        self.assertEqual((self.job("a")["max_retries"], self.job("b")["max_retries"]), (7, 0))


class EnqueueFileTest(CliTestCase):
    def write(self, text, name="jobs.jsonl"):
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def test_file(self):
        path = self.write('{"id": "a", "command": "echo a"}\n\n{"id": "b", "command": "echo b", "priority": 1}\r\n'
                          '{"command": "echo \u2028 and \x85 inside"}\n')
        self.assertEqual(self.ok("enqueue", "--file", path).stdout, "enqueued 3 jobs\n")
        ids = self.ids()
        self.assertEqual(ids[:2], ["a", "b"])
        self.assertEqual(self.job(ids[2])["command"], "echo \u2028 and \x85 inside")

    def test_file_json_output(self):
        path = self.write('{"id": "a", "command": "x"}\n{"id": "b", "command": "x"}\n')
        self.assertEqual(self.json_of("enqueue", "--file", path), {"count": 2, "ids": ["a", "b"], "conflicts": []})

    def test_stdin(self):
        result = self.ok("enqueue", "--file", "-", "--json",
                         stdin='\ufeff{"id": "s1", "command": "x"}\n{"id": "s2", "command": "y"}')
        self.assertEqual(json.loads(result.stdout), {"count": 2, "ids": ["s1", "s2"], "conflicts": []})

    def test_a_bad_line_stores_nothing_and_is_named(self):
        good = '{"id": "g%d", "command": "x"}\n'
        cases = [('{"command": "x", "bogus": 1}', "unknown job field 'bogus'"),
                 ('{"command": "x", "timeout": NaN}', "NaN"),
                 ('{"command": "x", "run_at": "2026-99-01"}', "run_at must be an ISO 8601"),
                 ("not json", "not valid JSON"),
                 ('{"command": "x", "max_retries": true}', "max_retries must be an integer")]
        for bad, message in cases:
            with self.subTest(bad=bad):
                path = self.write(good % 1 + "\n" + good % 2 + bad + "\n" + good % 3)
                line = self.fails("enqueue", "--file", path, message="^queuectl: error: line 4: .*" + message)
                self.assertIn("nothing was enqueued", line)
                self.fails("enqueue", "--file", "-", stdin=good % 1 + bad, message="line 2: ")
        self.assertEqual(self.ids(), [])

    def test_duplicates_store_nothing_and_are_named(self):
        self.ok("enqueue", '{"id": "old", "command": "x"}')
        self.fails("enqueue", "--file", self.write('{"id": "n1", "command": "x"}\n\n{"id": "old", "command": "x"}\n'),
                   message="^queuectl: error: line 3: a job with id 'old' already exists \\(nothing was enqueued\\)$")
        self.fails("enqueue", "--file", "-", stdin='{"id": "n1", "command": "x"}\n{"command": "y"}\n'
                                                   '{"id": "n1", "command": "x"}\n{"id": "n1", "command": "z"}\n',
                   message="^queuectl: error: line 3: a job with id 'n1' already exists")
        self.assertEqual(self.ids(), ["old"])

    def test_unusable_files(self):
        self.fails("enqueue", "--file", os.path.join(self.tmp, "missing.jsonl"), message="cannot read .*missing")
        self.fails("enqueue", "--file", self.write(""), message="holds no jobs")
        self.fails("enqueue", "--file", self.write("\n  \n"), message="holds no jobs")
        self.fails("enqueue", "--file", self.write(b'{"command": "\xff"}\n'), message="is not UTF-8 text")
        self.fails("enqueue", "--file", "-", stdin="", message="stdin holds no jobs")
        self.fails("enqueue", "--file", self.tmp, message="cannot read")
        self.fails("enqueue", "--file", os.path.join(self.tmp, "two\rlines\nhere"), message="cannot read")
        self.assertEqual(self.ids(), [])


class ClaimOrderTest(CliTestCase):
    def test_priority_then_due_time_then_enqueue_order(self):
        """What README says: higher priority first; among equal priority the job due first (its
        run_at, or after a failure its retry time), then the one enqueued first. So a job
        enqueued later with an earlier run_at runs first."""
        self.ok("enqueue", "--id", "retried", "--command", "false", "--run-at", "2019-01-01T00:00:00Z")
        with Store(self.db_path) as store:
            job = store.claim("w-test", 30, now=time.time())
            store.fail(job, "w-test", time.time(), error="exit code 1", exit_code=1, settings=retry_in(0))
        for job_id, options in (("same-time-1", ["--run-at", "2021-01-01T00:00:00Z"]),
                                ("due-earlier", ["--run-at", "2020-01-01T00:00:00Z"]),
                                ("same-time-2", ["--run-at", "2021-01-01T00:00:00Z"]),
                                ("urgent-last", ["--priority", "1"])):
            self.ok("enqueue", "--id", job_id, "--command", "true", *options)
        order = []
        with Store(self.db_path) as store:
            while True:
                job = store.claim("w-test", 30, now=time.time())
                if job is None:
                    break
                order.append(job["id"])
        # "retried" was enqueued first with the earliest run_at, but is due at its retry time: now.
        self.assertEqual(order, ["urgent-last", "due-earlier", "same-time-1", "same-time-2", "retried"])


class QueryTest(CliTestCase):
    def test_status_json_has_every_state_with_zeros(self):
        self.assertEqual(self.json_of("status"), {
            "jobs": {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "dead": 0, "cancelled": 0},
            "workers": {"processes": 0, "threads": 0}})
        self.ok("enqueue", '{"command": "x"}')
        self.make_dead("d")
        self.assertEqual(self.json_of("status")["jobs"],
                         {"pending": 1, "processing": 0, "completed": 0, "failed": 0, "dead": 1, "cancelled": 0})

    def test_status_text(self):
        text = self.ok("status").stdout
        for state in jobs.STATES:
            self.assertRegex(text, r"(?m)^%s +0$" % state)
        self.assertIn("workers: 0 processes, 0 threads", text)

    def test_list(self):
        self.assertEqual(self.ok("list").stdout, "no jobs\n")
        self.assertEqual(self.ok("list", "--state", "dead").stdout, "no dead jobs\n")
        self.assertEqual(self.json_of("list"), [])
        for i in range(5):
            self.ok("enqueue", json.dumps({"id": "j%d" % i, "command": "echo %d" % i}))
        self.make_dead("d")
        self.assertEqual(self.ids(), ["j0", "j1", "j2", "j3", "j4", "d"])
        self.assertEqual([j["id"] for j in self.json_of("list", "--limit", "2")], ["j0", "j1"])
        self.assertEqual(self.ids("dead"), ["d"])
        self.assertEqual(self.ids("pending"), ["j0", "j1", "j2", "j3", "j4"])
        text = self.ok("list").stdout.splitlines()
        self.assertEqual(text[0].split(), ["ID", "STATE", "ATTEMPTS", "PRI", "UPDATED", "COMMAND"])
        self.assertEqual(len(text), 7)
        for job in self.json_of("list"):
            self.assertLessEqual(SPEC_JOB_KEYS, set(job))

    def test_list_limit_default_is_100(self):
        path = os.path.join(self.tmp, "many.jsonl")
        with open(path, "w") as fh:
            fh.write("".join('{"command": "x"}\n' for _ in range(105)))
        self.ok("enqueue", "--file", path)
        self.assertEqual(len(self.json_of("list")), 100)
        self.assertEqual(len(self.ids()), 105)
        self.assertEqual(len(self.json_of("list", "--limit", str(10 ** 30))), 105)

    def test_list_errors(self):
        self.fails("list", "--state", "running", code=2,
                   message=r"unknown state 'running' \(valid states: pending, processing, completed, failed, dead, cancelled\)")
        self.fails("list", "--limit", "-1", code=2, message="must be 0 .* or more")
        self.fails("list", "--limit", "ten", code=2, message="whole number")

    def test_show_json(self):
        self.ok("enqueue", '{"id": "s", "command": "echo hi", "max_retries": 1}')
        job = self.json_of("show", "s")
        self.assertLessEqual(SPEC_JOB_KEYS, set(job))
        self.assertEqual(job["runs"], [])
        with Store(self.db_path) as store:
            now = time.time() + 1
            run_next(store, "s", start=now, end=now + 0.25, error="exit code 3", exit_code=3)
            run_next(store, "s", start=now + 1, end=now + 1.5)
        job = self.json_of("show", "s")
        self.assertEqual((job["state"], job["attempts"], job["exit_code"], job["next_run_at"]),
                         ("completed", 2, 0, None))
        self.assertEqual([set(run) for run in job["runs"]], [RUN_KEYS, RUN_KEYS])
        first, second = job["runs"]
        self.assertEqual((first["run"], first["attempt"], first["exit_code"], first["error"], first["worker"],
                          first["duration"]), (1, 1, 3, "exit code 3", "w-test", 0.25))
        self.assertEqual((second["run"], second["attempt"], second["exit_code"], second["error"], second["duration"]),
                         (2, 2, 0, None, 0.5))
        for key in ("run_at", "created_at", "updated_at", "started_at", "finished_at"):
            self.assertRegex(job[key], ISO_Z)
        for run in job["runs"]:
            self.assertRegex(run["started_at"], ISO_Z)
            self.assertRegex(run["finished_at"], ISO_Z)

    def test_show_text(self):
        self.make_dead("t")
        text = self.ok("show", "t").stdout
        self.assertRegex(text, r"(?m)^state +dead$")
        self.assertRegex(text, r"(?m)^last_error +exit code 3$")
        self.assertRegex(text, r"(?m)^attempts +1 of 1 \(max_retries 0\)$")
        self.assertRegex(text, r"(?m)^ +1 +1 .* 3 +exit code 3 +w-test$")

    def test_unknown_job(self):
        for argv in (("show", "nope"), ("show", "nope", "--json"), ("delete", "nope"), ("dlq", "retry", "nope")):
            with self.subTest(argv=argv):
                self.fails(*argv, message="^queuectl: error: no job with id 'nope'$")
        self.fails("show", "a\udcff", message="not valid Unicode text")

    def test_env_values_are_never_printed(self):
        self.ok("enqueue", json.dumps({"id": "e", "command": "echo", "env": {"TOKEN": SECRET}}))
        self.ok("enqueue", "--id", "o", "--command", "echo", "--env", "TOKEN=" + SECRET, "--env", "OTHER=" + SECRET)
        self.make_dead("d")
        outputs = [self.ok(*argv) for argv in (
            ("enqueue", json.dumps({"command": "x", "env": {"TOKEN": SECRET}}), "--json"),
            ("list",), ("list", "--json"), ("show", "e"), ("show", "e", "--json"), ("show", "o"),
            ("show", "o", "--json"), ("dlq", "list"), ("dlq", "list", "--json"), ("status",))]
        for result in outputs:
            self.assertNotIn(SECRET, result.stdout + result.stderr)
        self.assertEqual(self.json_of("show", "o")["env"], {"OTHER": "***", "TOKEN": "***"})
        self.assertRegex(self.ok("show", "e").stdout, r"(?m)^env +TOKEN=\*\*\*$")
        # ... while the worker still gets the real value.
        self.assertEqual(json.loads(self.job("e")["env"]), {"TOKEN": SECRET})


class DlqTest(CliTestCase):
    def test_list(self):
        self.assertEqual(self.ok("dlq", "list").stdout, "the dead letter queue is empty\n")
        self.assertEqual(self.json_of("dlq", "list"), [])
        self.ok("enqueue", '{"id": "alive", "command": "x"}')
        self.make_dead("d1", error="command not found")
        dead = self.json_of("dlq", "list")
        self.assertEqual([(j["id"], j["state"], j["last_error"], j["attempts"]) for j in dead],
                         [("d1", "dead", "command not found", 1)])
        self.assertLessEqual(SPEC_JOB_KEYS, set(dead[0]))
        text = self.ok("dlq", "list").stdout.splitlines()
        self.assertEqual(text[0].split(), ["ID", "ATTEMPTS", "DIED", "LAST", "ERROR", "COMMAND"])
        self.assertRegex(text[1], r"^d1 +1 .*command not found +false$")

    def test_retry_one(self):
        self.make_dead("d1")
        self.make_dead("d2")
        self.assertEqual(self.ok("dlq", "retry", "d1").stdout, "job d1 back to pending\n")
        job = self.json_of("show", "d1")
        self.assertEqual((job["state"], job["attempts"]), ("pending", 0))
        self.assertEqual(len(job["runs"]), 1, "the run history survives a retry")
        self.assertEqual(self.ids("dead"), ["d2"])
        self.fails("dlq", "retry", "d1", message=r"^queuectl: error: job 'd1' is pending, not dead")

    def test_retry_all(self):
        self.assertEqual(self.ok("dlq", "retry", "--all").stdout, "0 jobs back to pending\n")
        self.make_dead("d1")
        self.make_dead("d2")
        self.ok("enqueue", '{"id": "p", "command": "x"}')
        self.assertEqual(self.ok("dlq", "retry", "--all").stdout, "2 jobs back to pending\n")
        self.assertEqual(self.ids("pending"), ["d1", "d2", "p"])

    def test_retry_usage(self):
        self.fails("dlq", "retry", code=2, message="give a job ID or --all")
        self.fails("dlq", "retry", "x", "--all", code=2, message="give a job ID or --all")
        self.fails("dlq", "purge", code=2, message="invalid choice")

    def test_retrying_a_processing_job_is_an_error(self):
        self.make_processing("busy")
        self.fails("dlq", "retry", "busy", message="'busy' is processing, not dead")
        self.assertEqual(self.job("busy")["state"], "processing")


class DeletePurgeTest(CliTestCase):
    def test_delete(self):
        self.ok("enqueue", '{"id": "a", "command": "x"}')
        self.make_dead("d")
        self.assertEqual(self.ok("delete", "a").stdout, "deleted job a\n")
        self.ok("delete", "d")
        self.assertEqual(self.ids(), [])
        self.fails("delete", "a", message="no job with id 'a'")

    def test_delete_refuses_a_processing_job(self):
        self.make_processing("busy")
        self.fails("delete", "busy", message="^queuectl: error: job 'busy' is processing")
        self.assertEqual(self.ids(), ["busy"])

    def test_purge(self):
        self.ok("enqueue", '{"id": "p", "command": "x"}')
        self.make_dead("d1")
        self.make_dead("d2")
        self.assertEqual(self.ok("purge", "--state", "completed").stdout, "purged 0 completed jobs\n")
        self.assertEqual(self.ok("purge", "--state", "dead", "--older-than", "1h").stdout, "purged 0 dead jobs\n")
        self.assertEqual(self.ids(), ["p", "d1", "d2"])
        self.assertEqual(self.ok("purge", "--state", "dead").stdout, "purged 2 dead jobs\n")
        self.assertEqual(self.ids(), ["p"])
        self.assertEqual(self.json_of("status")["jobs"]["dead"], 0)

    def test_purge_errors(self):
        self.fails("purge", code=2, message="required: --state")
        self.fails("purge", "--state", "pending", code=2, message="invalid choice")
        self.fails("purge", "--state", "dead", "--older-than", "-5", code=2, message="--older-than")
        self.fails("purge", "--state", "dead", "--older-than", "old", code=2, message="duration like")


class ConfigTest(CliTestCase):
    def test_get_defaults(self):
        self.assertEqual(self.json_of("config", "get"), qconfig.defaults())
        self.assertEqual(self.json_of("config", "list"), qconfig.defaults())
        self.assertEqual(self.ok("config", "get", "backoff-base").stdout, "2\n")
        self.assertEqual(self.json_of("config", "get", "poll_interval"), {"poll-interval": 0.05})
        text = self.ok("config", "get").stdout
        self.assertIn("max-retries = 3\n", text)
        self.assertEqual(len(text.splitlines()), len(qconfig.SETTINGS))

    def test_set_both_spellings_are_one_key(self):
        self.assertEqual(self.ok("config", "set", "max_retries", "5").stdout, "max-retries = 5\n")
        self.assertEqual(self.ok("config", "get", "max-retries").stdout, "5\n")
        self.ok("config", "set", "max-retries", "6")
        self.assertEqual(self.ok("config", "get", "max_retries").stdout, "6\n")
        self.assertEqual(self.json_of("config", "get")["max-retries"], 6)
        self.assertNotIn("max_retries", self.json_of("config", "get"))

    def test_set_values(self):
        self.assertEqual(self.ok("config", "set", "backoff-max", "10m").stdout, "backoff-max = 600\n")
        self.assertEqual(self.ok("config", "set", "poll-interval", "0.5").stdout, "poll-interval = 0.5\n")
        self.ok("config", "set", "backoff-base", "3")
        values = self.json_of("config", "get")
        self.assertEqual((values["backoff-max"], values["poll-interval"], values["backoff-base"]), (600, 0.5, 3))
        listed = self.ok("config", "list").stdout
        self.assertRegex(listed, r"(?m)^backoff-max +600 +3600 ")

    def test_unknown_key_lists_the_valid_ones(self):
        valid = ", ".join(qconfig.SETTINGS)
        for argv in (("config", "get", "retries"), ("config", "set", "retries", "3")):
            with self.subTest(argv=argv):
                self.fails(*argv, message=r"unknown config key 'retries' \(valid keys: %s\)$" % valid)

    def test_bad_values_say_what_is_valid_and_change_nothing(self):
        cases = [("max-retries", "-1", "from 0 to 1000"), ("max-retries", "lots", "must be an integer"),
                 ("backoff-base", "0", "from 1 to"), ("backoff-max", "0", "seconds > 0"),
                 ("worker-count", "0", "from 1 to 256"), ("poll-interval", "0", "seconds >= 0.001"),
                 ("job-timeout", "forever", "duration like"), ("backoff-base", "nan", "from 1 to")]
        for key, value, message in cases:
            with self.subTest(key=key, value=value):
                self.fails("config", "set", key, value, message=message)
        self.assertEqual(self.json_of("config", "get"), qconfig.defaults())

    def test_usage(self):
        self.fails("config", "set", "max-retries", code=2)

    def test_a_bare_group_command_lists_its_actions(self):
        for group, actions in (("config", ("get", "set", "list")), ("dlq", ("list", "retry")),
                               ("worker", ("start", "stop", "list")), ("queue", ("list", "pause", "resume", "set"))):
            with self.subTest(group=group):
                shown = self.ok(group).stdout
                for action in actions:
                    self.assertRegex(shown, r"(?m)^ +%s +\S" % action)


class GlobalTest(CliTestCase):
    def test_version(self):
        result = self.cli("--version")
        self.assertEqual((result.code, result.stdout), (0, "queuectl %s\n" % __version__))

    def test_usage_errors(self):
        self.fails(code=2, message="required")
        self.fails("frobnicate", code=2, message="invalid choice")
        self.fails("status", "--bogus", code=2, message="unrecognized arguments")


class HomeTest(CliTestCase):
    def main(self, *argv, env):
        """queuectl.main without --home, with these environment variables (None: unset)."""
        out, err = io.StringIO(), io.StringIO()
        with mock.patch.dict(os.environ), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for name, value in env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            code = queuectl.main(list(argv))
        self.assertEqual(code, 0, err.getvalue())
        return out.getvalue()

    def test_precedence(self):
        user = os.path.join(self.tmp, "user")
        os.mkdir(user)
        env_home = os.path.join(self.tmp, "from-env")
        flag_home = os.path.join(self.tmp, "from-flag")
        fake_home = {"HOME": user, "USERPROFILE": user}
        self.main("enqueue", '{"id": "default", "command": "x"}', env=dict(fake_home, QUEUECTL_HOME=None))
        self.main("enqueue", '{"id": "env", "command": "x"}', env=dict(fake_home, QUEUECTL_HOME=env_home))
        self.main("--home", flag_home, "enqueue", '{"id": "flag", "command": "x"}',
                  env=dict(fake_home, QUEUECTL_HOME=env_home))
        for home, job_id in ((os.path.join(user, ".queuectl"), "default"), (env_home, "env"), (flag_home, "flag")):
            with Store(os.path.join(home, qhome.DB_NAME)) as store:
                self.assertEqual([j["id"] for j in store.list_jobs()], [job_id])

    @unittest.skipUnless(os.name == "posix", "file modes are POSIX")
    def test_home_0700_and_database_0600_under_umask_022(self):
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        fresh = os.path.join(self.tmp, "fresh", "home")
        result = self.cli("--home", fresh, "enqueue", '{"command": "x"}')  # the later --home wins
        self.assertEqual(result.code, 0, result)
        self.assertEqual(stat.S_IMODE(os.stat(fresh).st_mode), 0o700)
        db = os.path.join(fresh, qhome.DB_NAME)
        self.assertEqual(stat.S_IMODE(os.stat(db).st_mode), 0o600)
        with Store(db) as store:  # while a connection is open, the -wal and -shm files exist
            add_job(store, command="y")
            for suffix in ("-wal", "-shm"):
                self.assertEqual(stat.S_IMODE(os.stat(db + suffix).st_mode), 0o600, suffix)

    @unittest.skipUnless(os.name == "posix", "Windows cannot delete the working directory")
    def test_working_directory_deleted(self):
        gone = os.path.join(self.tmp, "gone")
        os.mkdir(gone)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(gone)
        os.rmdir(gone)
        self.fails("enqueue", "--command", "true", message="cannot read the current directory .*absolute cwd")
        self.fails("enqueue", '{"command": "true", "cwd": "sub"}', message="cannot read the current directory")
        self.ok("enqueue", "--command", "true", "--id", "abs", "--cwd", self.tmp)
        self.assertEqual(self.job("abs")["cwd"], self.tmp)
        self.fails("--home", "relative", "status", message="cannot find the queuectl home relative")

    def test_a_file_where_the_home_should_be(self):
        path = os.path.join(self.tmp, "file")
        open(path, "w").close()
        self.fails("--home", path, "status", message="not a directory")


class SubprocessTest(CliTestCase):
    """The real process boundary: exit codes, stderr, no traceback."""

    def test_exit_codes_and_stderr(self):
        ok = self.run_cli("enqueue", '{"id": "a", "command": "echo hi"}')
        self.assertEqual((ok.code, ok.stdout, ok.stderr), (0, "a\n", ""))
        cases = [(("show", "missing"), 1), (("enqueue", '{"id": "a", "command": "x"}'), 1),
                 (("enqueue", '{"command": "x", "timeout": NaN}'), 1), (("config", "set", "nope", "1"), 1),
                 (("enqueue", '{"command": "x", "timeout": 1%s}' % ("0" * 400)), 1),
                 (("list", "--limit", "-1"), 2), (("frobnicate",), 2), ((), 2)]
        for argv, code in cases:
            with self.subTest(argv=argv):
                result = self.run_cli(*argv)
                self.assertEqual(result.code, code, result)
                self.assertEqual(result.stdout, "")
                self.assertNotIn("Traceback", result.stderr)
                lines = result.stderr.splitlines()
                if code == 1:
                    self.assertEqual(len(lines), 1, result)
                    self.assertRegex(lines[0], "^queuectl: error: ")
                else:
                    self.assertRegex(lines[0], "^usage: queuectl")
                    self.assertRegex(lines[-1], "^queuectl.*: error: ")

    @unittest.skipUnless(os.name == "posix" and sys.platform != "darwin", "argv bytes that are not UTF-8")
    def test_bytes_that_are_not_utf8_in_argv(self):
        for argv in (("enqueue", "--command", "echo \udcff"), ("show", "a\udcff")):
            with self.subTest(argv=argv):
                result = self.run_cli(*argv)
                self.assertEqual(result.code, 1, result)
                self.assertRegex(result.stderr, r"^queuectl: error: .*not valid Unicode text[^\n]*\n$")

    def test_unreadable_database_is_one_line(self):
        with open(self.db_path, "wb") as fh:
            fh.write(b"garbage " * 1000)
        result = self.run_cli("status")
        self.assertEqual(result.code, 1, result)
        self.assertRegex(result.stderr, r"^queuectl: error: .*not a usable queuectl database[^\n]*\n$")
        self.assertEqual(result.stdout, "")

    def test_version_and_stdin(self):
        result = self.run_cli("--version")
        self.assertEqual((result.code, result.stdout.strip()), (0, "queuectl " + __version__))
        result = self.run_cli("enqueue", "--file", "-", stdin='{"id": "x", "command": "true"}\n\n')
        self.assertEqual((result.code, result.stdout, result.stderr), (0, "enqueued 1 job\n", ""))


if __name__ == "__main__":
    unittest.main()
