"""queuectl runs three ways (`queuectl`, `python -m qctl`, `python queuectl.py`) with one
version number, kept in qctl/__init__.py."""

import os
import re
import subprocess
import sys
import unittest

import queuectl
from qctl import __version__
from tests.base import ROOT, SCRIPT

PYPROJECT = os.path.join(ROOT, "pyproject.toml")


def read_pyproject():
    """{section: {key: value}} of pyproject.toml: tomllib where it exists (3.11+), else a
    reader for the simple subset the file uses (strings, string arrays, inline tables)."""
    with open(PYPROJECT, "rb") as fh:
        data = fh.read()
    try:
        import tomllib
    except ImportError:
        return _read_simple_toml(data.decode("utf-8"))
    parsed = tomllib.loads(data.decode("utf-8"))
    sections = {}

    def walk(prefix, table):
        sections[prefix] = {}
        for key, value in table.items():
            if isinstance(value, dict) and not (prefix == "tool.setuptools.dynamic"):
                walk(prefix + "." + key if prefix else key, value)
            else:
                sections[prefix][key] = value
    walk("", parsed)
    return sections


def _read_simple_toml(text):
    sections, current, pending = {"": {}}, "", None
    for line in text.splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if pending is not None:
            pending[1].append(line)
            if line.endswith("]"):
                sections[current][pending[0]] = _simple_value(" ".join(pending[1]))
                pending = None
            continue
        if not line:
            continue
        header = re.match(r"^\[([^\]]+)\]$", line)
        if header:
            current = header.group(1).strip()
            sections.setdefault(current, {})
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        key = key.strip('"')
        if value.startswith("[") and not value.endswith("]"):
            pending = (key, [value])
        else:
            sections[current][key] = _simple_value(value)
    return sections


def _simple_value(text):
    if text.startswith("["):
        return re.findall(r'"([^"]*)"', text)
    if text.startswith("{"):
        return {k: v for k, v in re.findall(r'(\w+)\s*=\s*"([^"]*)"', text)}
    return text.strip('"')


class PackagingTest(unittest.TestCase):
    def test_python_dash_m_qctl_prints_the_version(self):
        proc = subprocess.run([sys.executable, "-m", "qctl", "--version"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual((proc.returncode, proc.stdout, proc.stderr), (0, "queuectl %s\n" % __version__, ""))

    def test_python_dash_m_qctl_passes_exit_codes_through(self):
        proc = subprocess.run([sys.executable, "-m", "qctl", "no-such-command"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("invalid choice", proc.stderr)

    def test_the_script_prints_the_same_version(self):
        proc = subprocess.run([sys.executable, SCRIPT, "--version"], cwd=os.path.dirname(ROOT),
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.stdout, "queuectl %s\n" % __version__)

    def test_version_is_read_from_qctl(self):
        meta = read_pyproject()
        self.assertNotIn("version", meta["project"], "the version lives in qctl/__init__.py only")
        self.assertIn("version", meta["project"]["dynamic"])
        self.assertEqual(meta["tool.setuptools.dynamic"]["version"], {"attr": "qctl.__version__"})
        self.assertRegex(__version__, r"^\d+\.\d+\.\d+([ab]|rc)?\d*$")

    def test_no_other_file_spells_the_version(self):
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("build", "dist", "__pycache__")]
            for name in names:
                path = os.path.join(folder, name)
                if not name.endswith((".py", ".toml", ".cfg")) or path == os.path.join(ROOT, "qctl", "__init__.py"):
                    continue
                with open(path, encoding="utf-8") as fh:
                    self.assertNotRegex(fh.read(), r"""["']%s["']""" % re.escape(__version__),
                                        "%s repeats the version; import qctl.__version__" % path)

    def test_entry_point_and_files(self):
        meta = read_pyproject()
        self.assertEqual(meta["project"]["dependencies"], [])
        self.assertEqual(meta["project.scripts"]["queuectl"], "queuectl:main")
        self.assertTrue(callable(queuectl.main))
        self.assertEqual(meta["tool.setuptools"]["py-modules"], ["queuectl"])
        self.assertEqual(meta["tool.setuptools.packages.find"]["include"], ["qctl", "qctl.*"])
        # Non-Python files under qctl/ (the dashboard's static files) ship in the wheel.
        self.assertEqual(meta["tool.setuptools.package-data"]["qctl"], ["**/*"])
        self.assertEqual(meta["project"]["requires-python"], ">=3.8")


if __name__ == "__main__":
    unittest.main()
