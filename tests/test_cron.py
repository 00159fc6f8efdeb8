"""qctl.cron: our own five-field cron and `--every`, in a fixed zone (TZ) so that DST is tested."""

import os
import time
import unittest

from qctl import cron
from qctl.errors import InvalidJob

# US Eastern as a POSIX TZ rule: no tz database needed. DST from the 2nd Sunday of March 02:00
# to the 1st Sunday of November 02:00.
EASTERN = "EST5EDT,M3.2.0,M11.1.0"


class ZoneTestCase(unittest.TestCase):
    zone = EASTERN

    def setUp(self):
        if not hasattr(time, "tzset"):
            self.skipTest("time.tzset is POSIX only")
        old = os.environ.get("TZ")
        os.environ["TZ"] = self.zone
        time.tzset()

        def restore():
            if old is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = old
            time.tzset()
        self.addCleanup(restore)

    @staticmethod
    def at(text):
        """Local 'YYYY-mm-dd HH:MM' as epoch seconds (the first of two, in a repeated hour)."""
        return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M"))

    def fires(self, spec, start, n=6):
        """The next `n` fire times after local `start`, as local 'mm-dd HH:MM ZONE'."""
        expr, t, out = cron.Cron(spec), self.at(start), []
        for _ in range(n):
            t = expr.next_after(t)
            out.append(time.strftime("%m-%d %H:%M %Z", time.localtime(t)))
        return out


class CronFieldTest(ZoneTestCase):
    def test_every_form_of_a_field(self):
        expr = cron.Cron("*/15 1-3,22 */10 1,6-8 1-5/2")
        self.assertEqual(expr.minutes, [0, 15, 30, 45])
        self.assertEqual(expr.hours, [1, 2, 3, 22])
        self.assertEqual(expr.days, [1, 11, 21, 31])
        self.assertEqual(expr.months, [1, 6, 7, 8])
        self.assertEqual(expr.weekdays, {1, 3, 5})
        self.assertEqual(cron.Cron("5/20 * * * *").minutes, [5, 25, 45])

    def test_sunday_is_0_and_7(self):
        self.assertEqual(cron.Cron("0 0 * * 7").weekdays, {0})
        self.assertEqual(self.fires("0 0 * * 7", "2026-01-01 00:00", 2), ["01-04 00:00 EST", "01-11 00:00 EST"])

    def test_every_7_hours_restarts_each_day(self):
        # */7 is 0, 7, 14, 21 within a day, not every 7 hours around the clock.
        self.assertEqual(self.fires("0 */7 * * *", "2026-01-01 00:00", 5),
                         ["01-01 07:00 EST", "01-01 14:00 EST", "01-01 21:00 EST", "01-02 00:00 EST",
                          "01-02 07:00 EST"])

    def test_month_ends(self):
        self.assertEqual(self.fires("0 0 31 * *", "2026-01-31 00:00", 4),
                         ["03-31 00:00 EDT", "05-31 00:00 EDT", "07-31 00:00 EDT", "08-31 00:00 EDT"])
        self.assertEqual(self.fires("0 12 29 2 *", "2026-01-01 00:00", 2)[0], "02-29 12:00 EST")  # 2028
        expr = cron.Cron("0 12 29 2 *")
        self.assertEqual(time.localtime(expr.next_after(self.at("2026-01-01 00:00"))).tm_year, 2028)

    def test_day_of_month_or_day_of_week_when_both_are_restricted(self):
        # The 13th, or any Friday: cron's rule.
        self.assertEqual(self.fires("0 0 13 * 5", "2026-01-01 00:00", 4),
                         ["01-02 00:00 EST", "01-09 00:00 EST", "01-13 00:00 EST", "01-16 00:00 EST"])
        # With day-of-month `*`, only Fridays; with day-of-week `*`, only the 13th.
        self.assertEqual(self.fires("0 0 * * 5", "2026-01-01 00:00", 2), ["01-02 00:00 EST", "01-09 00:00 EST"])
        self.assertEqual(self.fires("0 0 13 * *", "2026-01-01 00:00", 2), ["01-13 00:00 EST", "02-13 00:00 EST"])
        # A field that starts with * counts as unrestricted, as in Vixie cron, even as */10: so
        # "*/10 days and Mondays" is both at once (the 1st, 11th, 21st or 31st that is a Monday).
        self.assertEqual(self.fires("0 0 */10 * 1", "2026-01-01 00:00", 3),
                         ["05-11 00:00 EDT", "06-01 00:00 EDT", "08-31 00:00 EDT"])
        # ... while 1-31/10 is restricted: either.
        self.assertEqual(self.fires("0 0 1-31/10 * 1", "2026-01-01 00:00", 3),
                         ["01-05 00:00 EST", "01-11 00:00 EST", "01-12 00:00 EST"])

    def test_next_is_strictly_after_now(self):
        t = self.at("2026-05-05 10:30")
        self.assertEqual(cron.Cron("30 10 * * *").next_after(t), self.at("2026-05-06 10:30"))
        self.assertEqual(cron.Cron("* * * * *").next_after(t + 0.5), self.at("2026-05-05 10:31"))

    def test_spring_forward_fires_a_skipped_time_once_right_after(self):
        # 2026-03-08: 02:00 EST becomes 03:00 EDT; 02:30 does not exist that day.
        self.assertEqual(self.fires("30 2 * * *", "2026-03-07 12:00", 2), ["03-08 03:30 EDT", "03-09 02:30 EDT"])
        # Every quarter hour: the skipped hour's four times come to one fire at 03:00, no burst.
        self.assertEqual(self.fires("*/15 * * * *", "2026-03-08 01:20", 5),
                         ["03-08 01:30 EST", "03-08 01:45 EST", "03-08 03:00 EDT", "03-08 03:15 EDT",
                          "03-08 03:30 EDT"])

    def test_fall_back_fires_a_repeated_time_once(self):
        # 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice, and fires once.
        runs = self.fires("30 1 * * *", "2026-10-31 12:00", 2)
        self.assertEqual(runs, ["11-01 01:30 EDT", "11-02 01:30 EST"])
        fires = [cron.Cron("*/20 * * * *").next_after(self.at("2026-11-01 00:50"))]
        for _ in range(5):
            fires.append(cron.Cron("*/20 * * * *").next_after(fires[-1]))
        self.assertEqual(len(set(fires)), 6)
        self.assertEqual(fires, sorted(fires))

    def test_bad_specs_are_one_clear_error(self):
        cases = [("* * * *", "has 5 fields"), ("60 * * * *", "minute: a value must be 0-59, not 60"),
                 ("* 24 * * *", "hour: a value must be 0-23"), ("* * 0 * *", "day-of-month: a value must be 1-31"),
                 ("* * * 13 *", "month: a value must be 1-12"), ("* * * * 8", "day-of-week: a value must be 0-7"),
                 ("*/0 * * * *", "a step must be"), ("5-2 * * * *", "runs backwards"),
                 ("a * * * *", "'a' is not a value"), ("1,,2 * * * *", "'' is not a value"),
                 ("0 0 30 2 *", "never fires"), ("JAN * * * *", "'JAN' is not a value"), ("\u0661 * * * *", "not a value")]
        for spec, message in cases:
            with self.subTest(spec=spec):
                with self.assertRaisesRegex(InvalidJob, message):
                    cron.cron_spec(spec)


class EveryTest(unittest.TestCase):
    def test_every_spec(self):
        self.assertEqual(cron.every_spec("90s"), "every 90")
        self.assertEqual(cron.describe(cron.every_spec("2h")), "every 2h")
        self.assertEqual(cron.describe(cron.every_spec("90")), "every 90s")
        for bad in ("0", "0.5", "-1", "soon"):
            with self.subTest(bad=bad):
                with self.assertRaises(InvalidJob):
                    cron.every_spec(bad)

    def test_first_fire_is_one_interval_away_and_the_phase_is_kept(self):
        self.assertEqual(cron.next_due("every 60", now=1000.0), 1060.0)
        self.assertEqual(cron.next_due("every 60", now=1060.004, due=1060.0), 1120.0)

    def test_missed_fires_are_caught_up_by_one(self):
        # Due at 1060, nobody ran until 1500: one fire now, the next on the old phase after now.
        self.assertEqual(cron.next_due("every 60", now=1500.0, due=1060.0), 1540.0)
        self.assertEqual(cron.next_due("every 60", now=1540.0, due=1060.0), 1600.0)


if __name__ == "__main__":
    unittest.main()
