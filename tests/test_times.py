"""Durations (30, 30s, 5m, 2h, 1d) wherever seconds are taken; ISO 8601 timestamps in,
UTC `Z` timestamps out."""

import json
import time
import unittest
from datetime import datetime

from qctl import jobs
from qctl.errors import ConfigError, InvalidJob
from tests.base import HomeTestCase


class DurationTest(unittest.TestCase):
    def test_units(self):
        for text, seconds in (("30", 30), ("30s", 30), ("1.5s", 1.5), ("5m", 300), ("2h", 7200), ("1d", 86400),
                              (" 2H ", 7200), (".5m", 30)):
            with self.subTest(text=text):
                self.assertEqual(jobs.parse_duration(text, "delay"), seconds)

    def test_bad_durations_name_the_field(self):
        for bad in ("", "5x", "-5", "5 m s", "m", "1e3", True, None, [5]):
            with self.subTest(bad=bad), self.assertRaisesRegex(InvalidJob, "^delay must be"):
                jobs.parse_duration(bad, "delay")

    def test_every_seconds_config_key_takes_units(self):
        for key in ("backoff-max", "job-timeout", "lease-seconds", "poll-interval"):
            with self.subTest(key=key):
                self.assertEqual(jobs.config_value(key, "1m"), 60.0)
                with self.assertRaises(ConfigError):
                    jobs.config_value(key, "1 fortnight")


class TimestampTest(unittest.TestCase):
    def test_zones(self):
        utc_9am = 1769850000.0  # 2026-01-31T09:00:00Z
        for text in ("2026-01-31T09:00:00Z", "2026-01-31T09:00:00z", "2026-01-31 09:00:00+00:00",
                     "2026-01-31T11:00:00+02:00", "2026-01-31T11:00:00+0200", "2026-01-31T11+02",
                     "2026-01-31T04:00-05:00", "2026-01-31T090000Z"):
            with self.subTest(text=text):
                self.assertEqual(jobs.parse_timestamp(text), utc_9am)

    def test_fractions_of_any_length(self):
        self.assertEqual(jobs.parse_timestamp("2026-01-31T09:00:00.5Z"), 1769850000.5)
        self.assertEqual(jobs.iso(jobs.parse_timestamp("2026-01-31T09:00:00.1234567Z")), "2026-01-31T09:00:00.123Z")

    def test_naive_means_local_time(self):
        self.assertEqual(jobs.parse_timestamp("2026-07-01T09:30"), datetime(2026, 7, 1, 9, 30).timestamp())
        self.assertEqual(jobs.parse_timestamp("2026-07-01"), datetime(2026, 7, 1).timestamp())

    def test_bad_timestamps(self):
        for bad in ("", "tomorrow", "2026-13-01", "2026-02-30", "2026-01-31T24:00", "2026-1-31",
                    "2026-01-31T09:00+25:00", "2026-01-31T09:00:00 junk", "1969-12-31T00:00:00Z", 1769850000):
            with self.subTest(bad=bad), self.assertRaisesRegex(InvalidJob, "^run_at must be"):
                jobs.parse_timestamp(bad)

    def test_iso_prints_utc_with_z(self):
        self.assertEqual(jobs.iso(1769850000.25), "2026-01-31T09:00:00.250Z")
        self.assertIsNone(jobs.iso(None))


class CommandLineTimesTest(HomeTestCase):
    def enqueue_json(self, *argv):
        return json.loads(self.ok("enqueue", "--json", *argv).stdout)

    def test_enqueue_options_take_durations(self):
        before = time.time()
        job = self.enqueue_json("--command", "true", "--timeout", "5m", "--delay", "2h")
        self.assertEqual(job["timeout"], 300.0)
        run_at = self.job(job["id"])["run_at"]
        self.assertGreaterEqual(run_at, before + 7200)
        self.assertLessEqual(run_at, time.time() + 7200)

    def test_job_json_takes_durations(self):
        job = self.enqueue_json('{"command": "true", "timeout": "1.5s", "delay": "1d"}')
        self.assertEqual(job["timeout"], 1.5)
        self.assertGreater(self.job(job["id"])["run_at"], time.time() + 86000)

    def test_enqueue_run_at_is_printed_in_utc(self):
        job = self.enqueue_json("--command", "true", "--run-at", "2026-01-31T11:00:00+02:00")
        self.assertEqual(job["run_at"], "2026-01-31T09:00:00.000Z")
        for field in ("created_at", "updated_at", "next_run_at"):
            self.assertTrue(job[field].endswith("Z"), job)

    def test_bad_duration_option_is_one_line_and_stores_nothing(self):
        result = self.cli("enqueue", "--command", "true", "--timeout", "5 minutes")
        self.assertEqual(result.code, 1)
        self.assertRegex(result.stderr, r"^queuectl: error: timeout must be .*30s, 5m, 2h, 1d.*\n$")
        self.assertEqual(self.ok("list", "--json").stdout.strip(), "[]")

    def test_config_and_other_options_take_durations(self):
        self.assertEqual(self.ok("config", "set", "job-timeout", "1d").stdout, "job-timeout = 86400\n")
        self.assertEqual(self.ok("config", "set", "backoff-max", "10m").stdout, "backoff-max = 600\n")
        self.ok("purge", "--state", "completed", "--older-than", "7d")
        self.ok("wait", "--timeout", "1m")  # nothing to wait for: returns at once
        result = self.cli("purge", "--state", "dead", "--older-than", "soon")
        self.assertEqual(result.code, 2)
        self.assertIn("--older-than: must be a number of seconds", result.stderr)

    @unittest.skipUnless(hasattr(time, "tzset"), "TZ is read by the C library only on POSIX")
    def test_naive_run_at_uses_the_local_zone(self):
        result = self.run_cli("enqueue", "--json", "--command", "true", "--run-at", "2026-01-31T09:00",
                              env={"TZ": "Asia/Kolkata"})
        self.assertEqual(result.code, 0, result)
        self.assertEqual(json.loads(result.stdout)["run_at"], "2026-01-31T03:30:00.000Z")


if __name__ == "__main__":
    unittest.main()
