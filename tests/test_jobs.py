"""The job model (qctl.jobs): validation of every job field, backoff and the rule for a
failed run. Pure functions: no database, no processes."""

import io
import json
import os
import unittest

from qctl import jobs
from qctl.errors import InvalidJob

NOW = 1800000000.0  # 2027-01-15T08:00:00Z


def validate(raw, **kwargs):
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("cwd", os.path.abspath(os.sep))
    kwargs.setdefault("default_max_retries", 3)
    return jobs.validate_job(raw, **kwargs)


class BackoffTest(unittest.TestCase):
    def test_base_to_the_failures_capped(self):
        self.assertEqual([jobs.backoff_delay(k, 2, 3600) for k in range(1, 6)], [2, 4, 8, 16, 32])
        self.assertEqual(jobs.backoff_delay(3, 3, 3600), 27)
        self.assertEqual(jobs.backoff_delay(3, 1.5, 3600), 3.375)
        self.assertEqual(jobs.backoff_delay(12, 2, 3600), 3600)
        self.assertEqual(jobs.backoff_delay(5, 1, 3600), 1)
        self.assertEqual(jobs.backoff_delay(4, 10, 60), 60)

    def test_after_failure_retries_until_max_retries_then_dead(self):
        settings = {"backoff-base": 2, "backoff-max": 3600}
        self.assertEqual(jobs.after_failure(1, 3, settings, NOW), (jobs.FAILED, NOW + 2))
        self.assertEqual(jobs.after_failure(3, 3, settings, NOW), (jobs.FAILED, NOW + 8))
        self.assertEqual(jobs.after_failure(4, 3, settings, NOW), (jobs.DEAD, NOW))
        self.assertEqual(jobs.after_failure(1, 0, settings, NOW), (jobs.DEAD, NOW))
        self.assertEqual(jobs.after_failure(20, 30, {"backoff-base": 2, "backoff-max": 60}, NOW), (jobs.FAILED, NOW + 60))

    def test_overflow_gives_the_cap(self):
        self.assertEqual(jobs.backoff_delay(1000, 1000000, 3600), 3600)
        self.assertEqual(jobs.backoff_delay(10 ** 6, 2, 7), 7)
        self.assertEqual(jobs.backoff_delay(200, 1e300, 3600.0), 3600.0)


class ValidateJobTest(unittest.TestCase):
    def test_minimal_job_gets_every_default(self):
        job = validate({"command": "echo hi"}, cwd="/somewhere", default_max_retries=7)
        self.assertEqual(job, {"id": None, "command": "echo hi", "max_retries": 7, "priority": 0, "run_at": NOW,
                               "timeout": None, "cwd": "/somewhere", "env": None, "queue": "default", "tags": [],
                               "after": [], "after_policy": "completed", "unique_key": None})

    def test_every_field(self):
        job = validate({"id": "job-1", "command": "true", "max_retries": 0, "priority": -5,
                        "run_at": "2027-01-15T09:00:00Z", "timeout": "2m", "cwd": "sub",
                        "env": {"B": "2", "A": "1"}}, cwd=os.path.join(os.sep, "base"))
        self.assertEqual(job["id"], "job-1")
        self.assertEqual(job["max_retries"], 0)
        self.assertEqual(job["priority"], -5)
        self.assertEqual(job["run_at"], NOW + 3600)
        self.assertEqual(job["timeout"], 120)
        self.assertEqual(job["cwd"], os.path.join(os.sep, "base", "sub"))
        self.assertEqual(json.loads(job["env"]), {"A": "1", "B": "2"})

    def test_delay_is_relative_to_now(self):
        self.assertEqual(validate({"command": "x", "delay": "5m"})["run_at"], NOW + 300)
        self.assertEqual(validate({"command": "x", "delay": 30})["run_at"], NOW + 30)
        with self.assertRaisesRegex(InvalidJob, "run_at or delay, not both"):
            validate({"command": "x", "delay": 30, "run_at": "2027-01-15T09:00:00Z"})

    def test_nulls_mean_defaults(self):
        job = validate({"command": "x", "id": None, "max_retries": None, "timeout": None, "run_at": None,
                        "cwd": None, "env": None})
        self.assertEqual((job["id"], job["max_retries"], job["timeout"], job["run_at"], job["env"]),
                         (None, 3, None, NOW, None))

    def test_rejections(self):
        cases = [
            ([], "must be a JSON object, not an array"),
            ("echo", "must be a JSON object"),
            ({}, "needs a 'command'"),
            ({"command": "x", "cmd": "y", "extra": 1}, r"unknown job field 'cmd', 'extra' \(valid fields: id, command"),
            ({"command": ""}, "command must not be empty"),
            ({"command": "  \n"}, "command must not be empty"),
            ({"command": 5}, "command must be a string, not the number 5"),
            ({"command": None}, "command must be a string, not null"),
            ({"command": "a\x00b"}, "NUL"),
            ({"command": "x", "id": ""}, "id must not be empty"),
            ({"command": "x", "id": 12}, "id must be a string"),
            ({"command": "x", "id": "a" * 201}, "at most 200 characters"),
            ({"command": "x", "id": "a\nb"}, "control characters"),
            ({"command": "x", "id": "a\tb"}, "control characters"),
            ({"command": "x", "id": "a\x7fb"}, "control characters"),
            ({"command": "x", "id": "a\u2028b"}, "control characters"),
            ({"command": "x", "max_retries": -1}, "max_retries must be between 0 and 1000"),
            ({"command": "x", "max_retries": 1001}, "max_retries must be between 0 and 1000"),
            ({"command": "x", "max_retries": "3"}, "max_retries must be an integer, not the string '3'"),
            ({"command": "x", "max_retries": 2.0}, "max_retries must be an integer"),
            ({"command": "x", "max_retries": True}, "max_retries must be an integer, not true"),
            ({"command": "x", "priority": None}, "priority must be an integer, not null"),
            ({"command": "x", "priority": 1.5}, "priority must be an integer"),
            ({"command": "x", "priority": 10 ** 10}, "priority must be between"),
            ({"command": "x", "run_at": "soon"}, "run_at must be an ISO 8601"),
            ({"command": "x", "run_at": 1800000000}, "run_at must be an ISO 8601 timestamp string"),
            ({"command": "x", "delay": "-1s"}, "delay must be"),
            ({"command": "x", "timeout": 0}, "timeout must be more than 0"),
            ({"command": "x", "timeout": -2}, "timeout must be"),
            ({"command": "x", "timeout": "fast"}, "timeout must be"),
            ({"command": "x", "timeout": False}, "timeout must be"),
            ({"command": "x", "cwd": ""}, "cwd must be a non-empty path"),
            ({"command": "x", "cwd": 7}, "cwd must be a non-empty path"),
            ({"command": "x", "env": ["A=1"]}, "env must be an object of strings, not an array"),
            ({"command": "x", "env": {"A": 1}}, "env value of 'A' must be a string, not the number 1"),
            ({"command": "x", "env": {"A": None}}, "env value of 'A' must be a string, not null"),
            ({"command": "x", "env": {"": "1"}}, "not a valid variable name"),
            ({"command": "x", "env": {"A=B": "1"}}, "not a valid variable name"),
            ({"command": "x", "env": {"A\nB": "1"}}, "not a valid variable name"),
            ({"command": "x", "env": {"A\x00": "1"}}, "not a valid variable name"),
            ({"command": "x", "env": {"A": "\x00"}}, "NUL"),
        ]
        for raw, message in cases:
            with self.subTest(raw=raw), self.assertRaisesRegex(InvalidJob, message):
                validate(raw)

    def test_text_that_is_not_unicode_is_rejected_naming_the_field(self):
        # Bytes that are not UTF-8 reach Python (from argv, or a JSON \ud800 escape) as lone
        # surrogates, which SQLite cannot store.
        for raw, field in (({"command": "echo \udcff"}, "command"), ({"command": "x", "id": "a\ud800"}, "id"),
                           ({"command": "x", "cwd": "d\udcff"}, "cwd"),
                           ({"command": "x", "env": {"K\udcff": "v"}}, "env"),
                           ({"command": "x", "env": {"K": "v\ud800"}}, "env")):
            with self.subTest(field=field), self.assertRaisesRegex(InvalidJob, "^%s .*not valid Unicode" % field):
                validate(raw)
        with self.assertRaises(InvalidJob) as caught:
            validate({"command": "x", "env": {"K": "s3cret\ud800"}})
        self.assertNotIn("s3cret", str(caught.exception))

    def test_parse_job_json(self):
        job = jobs.parse_job_json('{"command": "echo \\u00e9", "priority": 3}', now=NOW, cwd="/",
                                  default_max_retries=1)
        self.assertEqual((job["command"], job["priority"], job["max_retries"]), ("echo \u00e9", 3, 1))
        for text, message in (('{"command": "x", "timeout": NaN}', "NaN is not a number JSON allows"),
                              ('{"command": "x", "timeout": Infinity}', "Infinity is not a number"),
                              ('{"command": "x", "priority": -Infinity}', "-Infinity is not a number"),
                              ('{"command": "x"', "not valid JSON"),
                              ("", "not valid JSON"),
                              ("[" * 100000 + "]" * 100000, "not valid JSON"),
                              ('"just a string"', "must be a JSON object")):
            with self.subTest(text=text[:40]), self.assertRaisesRegex(InvalidJob, message):
                jobs.parse_job_json(text, now=NOW, cwd="/", default_max_retries=1)

    def test_sizes_are_bounded_in_utf8_bytes(self):
        limit = jobs.COMMAND_MAX_BYTES
        self.assertEqual(limit, 128 * 1024 - 1)  # Linux: one argument below 128 KiB, its NUL included
        self.assertEqual(len(validate({"command": "x" * limit})["command"]), limit)
        # "\u00e9" is two bytes: the limit counts bytes, not characters.
        for command in ("x" * (limit + 1), "\u00e9" * (limit // 2 + 1), "x" * 100 * 1024 * 1024):
            with self.subTest(chars=len(command)), self.assertRaisesRegex(
                    InvalidJob, "^command must be at most %d bytes as UTF-8, not %d bytes$"
                    % (limit, len(command.encode()))):
                validate({"command": command})
        self.assertTrue(validate({"command": "x", "cwd": "/" + "d" * (jobs.CWD_MAX_BYTES - 1)}))
        with self.assertRaisesRegex(InvalidJob, "^cwd must be at most 4095 bytes as UTF-8, not 4096 bytes$"):
            validate({"command": "x", "cwd": "/" + "d" * jobs.CWD_MAX_BYTES})
        with self.assertRaisesRegex(InvalidJob, "^cwd must be at most 4095 bytes"):  # checked once made absolute
            validate({"command": "x", "cwd": "d" * 4000}, cwd="/" + "b" * 100)
        # The env as its process gets it: KEY=VALUE and a NUL each.
        fits = {"K%03d" % i: "v" * (jobs.ENV_MAX_BYTES // 128 - 6) for i in range(128)}
        self.assertEqual(sum(len(k) + len(v) + 2 for k, v in fits.items()), jobs.ENV_MAX_BYTES)
        self.assertTrue(validate({"command": "x", "env": fits}))
        with self.assertRaises(InvalidJob) as caught:
            validate({"command": "x", "env": dict(fits, K999="s3cret")})
        self.assertRegex(str(caught.exception), "^env must be at most 128 KiB .*not 131084 bytes$")
        self.assertNotIn("s3cret", str(caught.exception))
        with self.assertRaisesRegex(InvalidJob, "^env must hold at most 1000 variables, not 1001$"):
            validate({"command": "x", "env": {"K%d" % i: "" for i in range(1001)}})

    def test_job_json_is_at_most_one_mib(self):
        padded = '{"command": "true"%s}'
        fits = padded % (" " * (jobs.JOB_JSON_MAX_BYTES - len(padded % "")))
        self.assertEqual(jobs.parse_job_json(fits, now=NOW, cwd="/", default_max_retries=1)["command"], "true")
        for text in (padded % (" " * jobs.JOB_JSON_MAX_BYTES), '{"command": "%s"}' % ("\u00e9" * 600000)):
            with self.subTest(chars=len(text)), self.assertRaisesRegex(
                    InvalidJob, r"^a job must be at most 1 MiB of JSON \(1048576 bytes as UTF-8\), not %d bytes$"
                    % len(text.encode())):
                jobs.parse_job_json(text, now=NOW, cwd="/", default_max_retries=1)


class JobLinesTest(unittest.TestCase):
    def parse(self, data):
        return jobs.parse_job_lines(io.BytesIO(data), "jobs.jsonl", now=NOW, cwd="/", default_max_retries=1)

    def test_lines_end_at_newlines_only(self):
        new, numbers = self.parse(b'\xef\xbb\xbf{"command": "a\xe2\x80\xa8b"}\r\n\n  \n{"command": "c"}')
        self.assertEqual([j["command"] for j in new], ["a\u2028b", "c"])
        self.assertEqual(numbers, [1, 4])

    def test_a_line_over_one_mib_is_refused_without_reading_it_all(self):
        padded = b'{"command": "true"%s}\n'
        fits = padded % (b" " * (jobs.JOB_JSON_MAX_BYTES + 1 - len(padded % b"")))
        self.assertEqual(len(fits), jobs.JOB_JSON_MAX_BYTES + 1)  # its newline is not part of the job
        self.assertEqual(self.parse(fits + fits)[1], [1, 2])

        class Endless(io.RawIOBase):
            """/dev/zero: one line that never ends."""
            read_bytes = 0

            def readable(self):
                return True

            def readinto(self, buffer):
                Endless.read_bytes += len(buffer)
                buffer[:] = b"\0" * len(buffer)
                return len(buffer)
        for stream in (io.BytesIO(fits + b" " + fits), io.BufferedReader(Endless())):
            with self.subTest(stream=type(stream).__name__), self.assertRaisesRegex(
                    InvalidJob, r"^line (1|2): a job must be at most 1 MiB of JSON \(1048576 bytes as UTF-8\); "
                                r"this line is longer \(nothing was enqueued\)$"):
                jobs.parse_job_lines(stream, "x", now=NOW, cwd="/", default_max_retries=1)
        self.assertLess(Endless.read_bytes, 2 * jobs.JOB_JSON_MAX_BYTES)

    def test_bytes_that_are_not_utf8_name_their_line(self):
        with self.assertRaisesRegex(InvalidJob, r"^line 2: this line is not UTF-8 text \(byte 30 of jobs.jsonl; "
                                                r"nothing was enqueued\)$"):
            self.parse(b'{"command": "a"}\n{"command": "\xff"}\n')
        with self.assertRaisesRegex(InvalidJob, "^line 2: job is not valid JSON: Unexpected UTF-8 BOM"):
            # A byte order mark only starts the file: later, it is a character JSON does not allow there.
            self.parse(b'{"command": "a"}\n\xef\xbb\xbf{"command": "b"}\n')

    def test_mask_env_keeps_keys_only(self):
        self.assertEqual(jobs.mask_env(json.dumps({"TOKEN": "s3cret", "B": "x"})), {"TOKEN": "***", "B": "***"})
        self.assertIsNone(jobs.mask_env(None))


if __name__ == "__main__":
    unittest.main()
