"""The job model (qctl.jobs): validation of every job field and config value, durations,
timestamps and backoff. Pure functions: no database, no processes."""

import json
import os
import unittest
from datetime import datetime

from qctl import jobs
from qctl.errors import ConfigError, InvalidJob

NOW = 1800000000.0  # 2027-01-15T08:00:00Z


def validate(raw, **kwargs):
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("cwd", os.path.abspath(os.sep))
    kwargs.setdefault("default_max_retries", 3)
    return jobs.validate_job(raw, **kwargs)


class DurationTest(unittest.TestCase):
    def test_units(self):
        cases = {"30": 30, "30s": 30, "5m": 300, "2h": 7200, "1d": 86400, "1.5s": 1.5, ".5m": 30,
                 " 2H ": 7200, "0": 0, 45: 45, 2.5: 2.5}
        for text, seconds in cases.items():
            with self.subTest(text=text):
                self.assertEqual(jobs.parse_duration(text, "delay"), seconds)

    def test_rejects_malformed_values_naming_the_field(self):
        for value in ("", "abc", "-5", "5x", "5 m s", "1e3", "nan", "inf", True, None, [], {}):
            with self.subTest(value=value), self.assertRaisesRegex(InvalidJob, "^delay must be"):
                jobs.parse_duration(value, "delay")

    def test_rejects_negative_numbers_and_zero_where_not_allowed(self):
        with self.assertRaisesRegex(InvalidJob, "at least 0"):
            jobs.parse_duration(-1, "delay")
        with self.assertRaisesRegex(InvalidJob, "more than 0"):
            jobs.parse_duration(0, "timeout", allow_zero=False)
        with self.assertRaisesRegex(InvalidJob, "more than 0"):
            jobs.parse_duration("0s", "timeout", allow_zero=False)

    def test_rejects_more_than_ten_years_and_non_finite(self):
        self.assertEqual(jobs.parse_duration(jobs.SECONDS_LIMIT, "delay"), jobs.SECONDS_LIMIT)
        for value in (jobs.SECONDS_LIMIT + 1, "3651d", float("inf"), float("nan"), "9" * 400, 10 ** 400):
            with self.subTest(value=str(value)[:20]), self.assertRaisesRegex(InvalidJob, "at most"):
                jobs.parse_duration(value, "delay")


class TimestampTest(unittest.TestCase):
    def test_utc_with_z_and_with_offset(self):
        self.assertEqual(jobs.parse_timestamp("2027-01-15T08:00:00Z"), NOW)
        self.assertEqual(jobs.parse_timestamp("2027-01-15T08:00:00z"), NOW)
        self.assertEqual(jobs.parse_timestamp("2027-01-15T08:00:00+00:00"), NOW)
        self.assertEqual(jobs.parse_timestamp("2027-01-15T10:30:00+02:30"), NOW)
        self.assertEqual(jobs.parse_timestamp("2027-01-15T03:00:00-05:00"), NOW)
        self.assertEqual(jobs.parse_timestamp("2027-01-15T08:00:00.250Z"), NOW + 0.25)
        self.assertEqual(jobs.parse_timestamp("2027-01-15 08:00:00Z"), NOW)

    def test_no_zone_is_local_time(self):
        expected = datetime(2027, 1, 15, 8, 0, 0).timestamp()  # naive: the machine's local time
        self.assertEqual(jobs.parse_timestamp("2027-01-15T08:00:00"), expected)
        self.assertEqual(jobs.parse_timestamp("2027-01-15"), datetime(2027, 1, 15).timestamp())

    def test_rejects_bad_timestamps(self):
        for value in ("", "Z", "tomorrow", "2027-13-01T00:00:00Z", "2027-01-32", "2027-01-15T25:00:00Z",
                      "2027-01-15T08:00:00+25:00", "1700000000", "2027-01-15T08:00:00\x00"):
            with self.subTest(value=value), self.assertRaisesRegex(InvalidJob, "^run_at must be an ISO 8601"):
                jobs.parse_timestamp(value)
        for value in (1800000000, None, True, ["2027-01-15"]):
            with self.subTest(value=value), self.assertRaisesRegex(InvalidJob, "timestamp string"):
                jobs.parse_timestamp(value)

    def test_rejects_out_of_range_years(self):
        for value in ("1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"):
            with self.subTest(value=value), self.assertRaisesRegex(InvalidJob, "between 1970 and 9999"):
                jobs.parse_timestamp(value)
        self.assertEqual(jobs.parse_timestamp("9999-12-31T23:59:59Z"), jobs.LATEST_TS)

    def test_iso_is_utc_with_milliseconds_and_z(self):
        self.assertEqual(jobs.iso(NOW + 0.25), "2027-01-15T08:00:00.250Z")
        self.assertEqual(jobs.iso(0), "1970-01-01T00:00:00.000Z")
        self.assertIsNone(jobs.iso(None))
        self.assertEqual(jobs.parse_timestamp(jobs.iso(NOW + 1.5)), NOW + 1.5)


class BackoffTest(unittest.TestCase):
    def test_base_to_the_failures_capped(self):
        self.assertEqual([jobs.backoff_delay(k, 2, 3600) for k in range(1, 6)], [2, 4, 8, 16, 32])
        self.assertEqual(jobs.backoff_delay(3, 3, 3600), 27)
        self.assertEqual(jobs.backoff_delay(3, 1.5, 3600), 3.375)
        self.assertEqual(jobs.backoff_delay(12, 2, 3600), 3600)
        self.assertEqual(jobs.backoff_delay(5, 1, 3600), 1)
        self.assertEqual(jobs.backoff_delay(4, 10, 60), 60)

    def test_overflow_gives_the_cap(self):
        self.assertEqual(jobs.backoff_delay(1000, 1000000, 3600), 3600)
        self.assertEqual(jobs.backoff_delay(10 ** 6, 2, 7), 7)
        self.assertEqual(jobs.backoff_delay(200, 1e300, 3600.0), 3600.0)


class ValidateJobTest(unittest.TestCase):
    def test_minimal_job_gets_every_default(self):
        job = validate({"command": "echo hi"}, cwd="/somewhere", default_max_retries=7)
        self.assertEqual(job, {"id": None, "command": "echo hi", "max_retries": 7, "priority": 0, "run_at": NOW,
                               "timeout": None, "cwd": "/somewhere", "env": None})

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

    def test_mask_env_keeps_keys_only(self):
        self.assertEqual(jobs.mask_env(json.dumps({"TOKEN": "s3cret", "B": "x"})), {"TOKEN": "***", "B": "***"})
        self.assertIsNone(jobs.mask_env(None))


class ConfigTest(unittest.TestCase):
    def test_defaults_match_the_spec(self):
        self.assertEqual(jobs.config_defaults(), {
            "max-retries": 3, "backoff-base": 2, "backoff-max": 3600, "job-timeout": 0, "worker-count": 1,
            "lease-seconds": 30, "output-limit": 65536, "poll-interval": 0.05})

    def test_key_spellings(self):
        for name in ("max-retries", "max_retries", "MAX_RETRIES", " Max-Retries "):
            with self.subTest(name=name):
                self.assertEqual(jobs.config_key(name), "max-retries")
        with self.assertRaisesRegex(ConfigError, r"unknown config key 'retries' \(valid keys: max-retries, "
                                                 r"backoff-base, .*poll-interval\)"):
            jobs.config_key("retries")

    def test_valid_values(self):
        cases = [("max-retries", "0", 0), ("max-retries", " 10 ", 10), ("backoff-base", "1", 1.0),
                 ("backoff-base", "2.5", 2.5), ("backoff-max", "10m", 600.0), ("backoff-max", "0.5", 0.5),
                 ("job-timeout", "0", 0.0), ("job-timeout", "2h", 7200.0), ("worker-count", "1", 1),
                 ("worker-count", "256", 256), ("lease-seconds", "1d", 86400.0), ("output-limit", "0", 0),
                 ("poll-interval", "0.001", 0.001), ("poll-interval", "1m", 60.0), ("max-retries", 4, 4)]
        for key, text, value in cases:
            with self.subTest(key=key, text=text):
                self.assertEqual(jobs.config_value(key, text), value)

    def test_bad_values_say_what_is_valid(self):
        cases = [("max-retries", "-1", "from 0 to 1000"), ("max-retries", "1.5", "must be an integer"),
                 ("max-retries", "lots", "must be an integer"), ("max-retries", "1001", "from 0 to 1000"),
                 ("backoff-base", "0.5", "from 1 to 1000000"), ("backoff-base", "nan", "from 1 to"),
                 ("backoff-base", "inf", "from 1 to"), ("backoff-base", "two", "must be a number"),
                 ("backoff-max", "0", "seconds > 0"), ("backoff-max", "-5", "duration like"),
                 ("job-timeout", "soon", "duration like"), ("worker-count", "0", "from 1 to 256"),
                 ("worker-count", "257", "from 1 to 256"), ("lease-seconds", "0", "seconds > 0"),
                 ("lease-seconds", "2d", r"seconds > 0 and <= 86400"), ("output-limit", "-1", ">= 0|from 0"),
                 ("poll-interval", "0", r"seconds >= 0.001 and <= 60"), ("poll-interval", "61", "<= 60")]
        for key, text, message in cases:
            with self.subTest(key=key, text=text), self.assertRaisesRegex(ConfigError, message):
                jobs.config_value(key, text)


class PublicShapeTest(unittest.TestCase):
    def row(self, **overrides):
        row = {"seq": 1, "id": "j", "command": "c", "state": "pending", "attempts": 0, "runs": 0,
               "max_retries": 3, "priority": 0, "run_at": NOW, "next_run_at": NOW, "timeout": None,
               "cwd": "/", "env": json.dumps({"K": "v"}), "created_at": NOW, "updated_at": NOW,
               "started_at": None, "finished_at": None, "worker": None, "lease_until": None,
               "exit_code": None, "last_error": None}
        row.update(overrides)
        return row

    def test_next_run_at_only_while_waiting(self):
        self.assertEqual(jobs.public_job(self.row())["next_run_at"], "2027-01-15T08:00:00.000Z")
        self.assertEqual(jobs.public_job(self.row(state="failed"))["next_run_at"], "2027-01-15T08:00:00.000Z")
        for state in ("processing", "completed", "dead"):
            self.assertIsNone(jobs.public_job(self.row(state=state))["next_run_at"])

    def test_env_values_never_appear(self):
        shown = jobs.public_job(self.row())
        self.assertEqual(shown["env"], {"K": "***"})
        self.assertNotIn('"v"', json.dumps(shown))

    def test_run_duration(self):
        run = {"run": 2, "attempt": 1, "started_at": NOW, "finished_at": NOW + 1.2345, "exit_code": 3,
               "error": "exit code 3", "worker": "w"}
        self.assertEqual(jobs.public_run(run)["duration"], 1.234)
        self.assertIsNone(jobs.public_run(dict(run, finished_at=None))["duration"])


if __name__ == "__main__":
    unittest.main()
