"""Config keys (qctl.config): defaults, spellings, valid values and what an error says."""

import unittest

from qctl import config
from qctl.errors import ConfigError


class ConfigTest(unittest.TestCase):
    def test_defaults_match_the_spec(self):
        self.assertEqual(config.defaults(), {
            "max-retries": 3, "backoff-base": 2, "backoff-max": 3600, "job-timeout": 0, "worker-count": 1,
            "lease-seconds": 30, "output-limit": 65536, "poll-interval": 0.05, "retain-completed": 7 * 86400,
            "retain-dead": 0, "on-finish": ""})

    def test_key_spellings(self):
        for name in ("max-retries", "max_retries", "MAX_RETRIES", " Max-Retries "):
            with self.subTest(name=name):
                self.assertEqual(config.key(name), "max-retries")
        with self.assertRaisesRegex(ConfigError, r"unknown config key 'retries' \(valid keys: max-retries, "
                                                 r"backoff-base, .*retain-dead, on-finish\)"):
            config.key("retries")

    def test_valid_values(self):
        cases = [("max-retries", "0", 0), ("max-retries", " 10 ", 10), ("backoff-base", "1", 1.0),
                 ("backoff-base", "2.5", 2.5), ("backoff-max", "10m", 600.0), ("backoff-max", "0.5", 0.5),
                 ("job-timeout", "0", 0.0), ("job-timeout", "2h", 7200.0), ("worker-count", "1", 1),
                 ("worker-count", "256", 256), ("lease-seconds", "1d", 86400.0), ("output-limit", "0", 0),
                 ("poll-interval", "0.001", 0.001), ("poll-interval", "1m", 60.0), ("max-retries", 4, 4)]
        for key, text, value in cases:
            with self.subTest(key=key, text=text):
                self.assertEqual(config.value(key, text), value)

    def test_bad_values_say_what_is_valid(self):
        cases = [("max-retries", "-1", "from 0 to 1000"), ("max-retries", "1.5", "must be an integer"),
                 ("max-retries", "lots", "must be an integer"), ("max-retries", "1001", "from 0 to 1000"),
                 ("backoff-base", "0.5", "from 1 to 1000000"), ("backoff-base", "nan", "from 1 to"),
                 ("backoff-base", "inf", "from 1 to"), ("backoff-base", "two", "must be a number"),
                 ("backoff-max", "0", "seconds > 0"), ("backoff-max", "-5", "duration like"),
                 ("job-timeout", "soon", "duration like"), ("worker-count", "0", "from 1 to 256"),
                 ("worker-count", "257", "from 1 to 256"), ("lease-seconds", "0", "seconds >= 1"),
                 ("lease-seconds", "0.5", "seconds >= 1"), ("lease-seconds", "2d", r"seconds >= 1 and <= 86400"), ("output-limit", "-1", ">= 0|from 0"),
                 ("poll-interval", "0", r"seconds >= 0.001 and <= 60"), ("poll-interval", "61", "<= 60")]
        for key, text, message in cases:
            with self.subTest(key=key, text=text), self.assertRaisesRegex(ConfigError, message):
                config.value(key, text)

    def test_every_seconds_config_key_takes_units(self):
        for key in ("backoff-max", "job-timeout", "lease-seconds", "poll-interval"):
            with self.subTest(key=key):
                self.assertEqual(config.value(key, "1m"), 60.0)
                with self.assertRaises(ConfigError):
                    config.value(key, "1 fortnight")


if __name__ == "__main__":
    unittest.main()
