"""Durations (30, 30s, 5m, 2h, 1d) wherever seconds are taken; ISO 8601 timestamps in,
UTC `Z` timestamps out (qctl.times, and the command line)."""

import json
import time
import unittest
from datetime import datetime

from qctl import times
from qctl.errors import InvalidJob
from tests.base import HomeTestCase

NOW = 1800000000.0  # 2027-01-15T08:00:00Z


class DurationTest(unittest.TestCase):
    def test_units(self):
        cases = {"30": 30, "30s": 30, "5m": 300, "2h": 7200, "1d": 86400, "1.5s": 1.5, ".5m": 30,
                 " 2H ": 7200, "0": 0, 45: 45, 2.5: 2.5}
        for text, seconds in cases.items():
            with self.subTest(text=text):
                self.assertEqual(times.parse_duration(text, "delay"), seconds)

    def test_rejects_malformed_values_naming_the_field(self):
        for value in ("", "abc", "-5", "5x", "5 m s", "m", "1e3", "nan", "inf", True, None, [], [5], {}):
            with self.subTest(value=value), self.assertRaisesRegex(InvalidJob, "^delay must be"):
                times.parse_duration(value, "delay")

    def test_rejects_negative_numbers_and_zero_where_not_allowed(self):
        with self.assertRaisesRegex(InvalidJob, "at least 0"):
            times.parse_duration(-1, "delay")
        with self.assertRaisesRegex(InvalidJob, "more than 0"):
            times.parse_duration(0, "timeout", allow_zero=False)
        with self.assertRaisesRegex(InvalidJob, "more than 0"):
            times.parse_duration("0s", "timeout", allow_zero=False)

    def test_rejects_more_than_ten_years_and_non_finite(self):
        self.assertEqual(times.parse_duration(times.SECONDS_LIMIT, "delay"), times.SECONDS_LIMIT)
        for value in (times.SECONDS_LIMIT + 1, "3651d", float("inf"), float("nan"), "9" * 400, 10 ** 400):
            with self.subTest(value=str(value)[:20]), self.assertRaisesRegex(InvalidJob, "at most"):
                times.parse_duration(value, "delay")


class TimestampTest(unittest.TestCase):
    def test_utc_with_z_and_with_offset(self):
        self.assertEqual(times.parse_timestamp("2027-01-15T08:00:00Z"), NOW)
        self.assertEqual(times.parse_timestamp("2027-01-15T08:00:00z"), NOW)
        self.assertEqual(times.parse_timestamp("2027-01-15T08:00:00+00:00"), NOW)
        self.assertEqual(times.parse_timestamp("2027-01-15T10:30:00+02:30"), NOW)
        self.assertEqual(times.parse_timestamp("2027-01-15T03:00:00-05:00"), NOW)
        self.assertEqual(times.parse_timestamp("2027-01-15T08:00:00.250Z"), NOW + 0.25)
        self.assertEqual(times.parse_timestamp("2027-01-15 08:00:00Z"), NOW)

    def test_every_offset_form(self):
        utc_9am = 1769850000.0  # 2026-01-31T09:00:00Z
        for text in ("2026-01-31T09:00:00Z", "2026-01-31T09:00:00z", "2026-01-31 09:00:00+00:00",
                     "2026-01-31T11:00:00+02:00", "2026-01-31T11:00:00+0200", "2026-01-31T11+02",
                     "2026-01-31T04:00-05:00", "2026-01-31T090000Z"):
            with self.subTest(text=text):
                self.assertEqual(times.parse_timestamp(text), utc_9am)

    def test_fractions_of_any_length(self):
        self.assertEqual(times.parse_timestamp("2026-01-31T09:00:00.5Z"), 1769850000.5)
        self.assertEqual(times.iso(times.parse_timestamp("2026-01-31T09:00:00.1234567Z")), "2026-01-31T09:00:00.123Z")

    def test_no_zone_is_local_time(self):
        expected = datetime(2027, 1, 15, 8, 0, 0).timestamp()  # naive: the machine's local time
        self.assertEqual(times.parse_timestamp("2027-01-15T08:00:00"), expected)
        self.assertEqual(times.parse_timestamp("2027-01-15"), datetime(2027, 1, 15).timestamp())

    def test_rejects_bad_timestamps(self):
        for value in ("", "Z", "tomorrow", "2027-13-01T00:00:00Z", "2027-01-32", "2027-01-15T25:00:00Z",
                      "2027-01-15T08:00:00+25:00", "1700000000", "2027-01-15T08:00:00\x00", "2026-02-30",
                      "2026-01-31T24:00", "2026-1-31", "2026-01-31T09:00:00 junk"):
            with self.subTest(value=value), self.assertRaisesRegex(InvalidJob, "^run_at must be an ISO 8601"):
                times.parse_timestamp(value)
        for value in (1800000000, None, True, ["2027-01-15"]):
            with self.subTest(value=value), self.assertRaisesRegex(InvalidJob, "timestamp string"):
                times.parse_timestamp(value)

    def test_rejects_out_of_range_years(self):
        for value in ("1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"):
            with self.subTest(value=value), self.assertRaisesRegex(InvalidJob, "between 1970 and 9999"):
                times.parse_timestamp(value)
        self.assertEqual(times.parse_timestamp("9999-12-31T23:59:59Z"), times.LATEST_TS)

    def test_iso_is_utc_with_milliseconds_and_z(self):
        self.assertEqual(times.iso(NOW + 0.25), "2027-01-15T08:00:00.250Z")
        self.assertEqual(times.iso(0), "1970-01-01T00:00:00.000Z")
        self.assertIsNone(times.iso(None))
        self.assertEqual(times.parse_timestamp(times.iso(NOW + 1.5)), NOW + 1.5)


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
