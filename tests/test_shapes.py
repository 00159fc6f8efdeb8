"""The public JSON shapes (qctl.shapes): what --json and the dashboard's API return."""

import json
import unittest

from qctl import shapes

NOW = 1800000000.0  # 2027-01-15T08:00:00Z


class PublicShapeTest(unittest.TestCase):
    def row(self, **overrides):
        row = {"seq": 1, "id": "j", "command": "c", "state": "pending", "attempts": 0, "run": 0,
               "max_retries": 3, "priority": 0, "run_at": NOW, "next_run_at": NOW, "timeout": None,
               "cwd": "/", "env": json.dumps({"K": "v"}), "created_at": NOW, "updated_at": NOW,
               "started_at": None, "finished_at": None, "worker": None, "lease_until": None,
               "exit_code": None, "last_error": None, "queue": "default", "tags": [], "after": [],
               "after_policy": None, "waiting_for": [], "unique_key": None}
        row.update(overrides)
        return row

    def test_next_run_at_only_while_waiting(self):
        self.assertEqual(shapes.job(self.row())["next_run_at"], "2027-01-15T08:00:00.000Z")
        self.assertEqual(shapes.job(self.row(state="failed"))["next_run_at"], "2027-01-15T08:00:00.000Z")
        for state in ("processing", "completed", "dead"):
            self.assertIsNone(shapes.job(self.row(state=state))["next_run_at"])

    def test_env_values_never_appear(self):
        shown = shapes.job(self.row())
        self.assertEqual(shown["env"], {"K": "***"})
        self.assertNotIn('"v"', json.dumps(shown))

    def test_run_duration(self):
        run = {"run": 2, "attempt": 1, "started_at": NOW, "finished_at": NOW + 1.2345, "exit_code": 3,
               "error": "exit code 3", "worker": "w"}
        self.assertEqual(shapes.run(run)["duration"], 1.234)
        self.assertIsNone(shapes.run(dict(run, finished_at=None))["duration"])


if __name__ == "__main__":
    unittest.main()
