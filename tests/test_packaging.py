"""queuectl runs three ways (`queuectl`, `python -m qctl`, `python queuectl.py`) with one
version number, kept in qctl/__init__.py."""

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import queuectl
from qctl import __version__
from tests.base import ENVIRON_AS_GIVEN, ROOT, SCRIPT

PYPROJECT = os.path.join(ROOT, "pyproject.toml")
# What a build reads: the project table, its readme and licence, and the code.
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "queuectl.py", "qctl")


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
        # The one optional extra: psycopg, for a PostgreSQL database.
        self.assertEqual(meta["project.optional-dependencies"], {"postgres": ["psycopg>=3.1"]})
        self.assertEqual(meta["project.scripts"]["queuectl"], "queuectl:main")
        self.assertTrue(callable(queuectl.main))
        self.assertEqual(meta["tool.setuptools"]["py-modules"], ["queuectl"])
        self.assertEqual(meta["tool.setuptools.packages.find"]["include"], ["qctl", "qctl.*"])
        # Non-Python files under qctl/ (the dashboard's static files) ship in the wheel.
        self.assertEqual(meta["tool.setuptools.package-data"]["qctl"], ["**/*"])
        self.assertEqual(meta["project"]["requires-python"], ">=3.8")


    def test_an_install_ships_the_dashboard_page(self):
        if importlib.util.find_spec("setuptools") is None:
            self.skipTest("setuptools is not installed")
        # Its version from the metadata: importing setuptools here would patch distutils for every test.
        have = _version(importlib.metadata.version("setuptools"))
        needed = re.search(r"setuptools>=([\d.]+)", " ".join(read_pyproject()["build-system"]["requires"])).group(1)
        if have < _version(needed):
            self.skipTest("setuptools %s is older than the %s this build needs" % (".".join(map(str, have)), needed))
        # Build from a copy: a build writes queuectl.egg-info beside pyproject.toml.
        tmp = tempfile.mkdtemp(prefix="qctl-build-")
        self.addCleanup(shutil.rmtree, tmp, True)
        src, out = os.path.join(tmp, "src"), os.path.join(tmp, "out")
        os.mkdir(src)
        for name in BUILD_INPUTS:
            if os.path.isdir(os.path.join(ROOT, name)):
                shutil.copytree(os.path.join(ROOT, name), os.path.join(src, name),
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(os.path.join(ROOT, name), src)
        if importlib.util.find_spec("pip") and (importlib.util.find_spec("wheel") or have >= (70, 1)):
            argv = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--quiet", "--target", out, src]
        else:
            # setuptools < 70.1 builds wheels only with the `wheel` package. build_py lays out exactly
            # the files bdist_wheel would pack (the code and its package data), so check those.
            argv = [sys.executable, "-c", "from setuptools import setup; setup()", "--quiet", "build_py",
                    "--build-lib", out]
        proc = subprocess.run(argv, cwd=src, capture_output=True, text=True, timeout=120, env=ENVIRON_AS_GIVEN)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        # The installed copy finds its page where it looks for it.
        proc = subprocess.run([sys.executable, "-E", "-s", "-c",
                               "import qctl.dashboard as d; print(d.__file__); print(d.STATIC_DIR); "
                               "print(' '.join(['index.html'] + [n for n, _ in d.STATIC_FILES.values()]))"],
                              cwd=out, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        module, static_dir, names = proc.stdout.splitlines()
        self.assertTrue(module.startswith(out), module)
        self.assertEqual(os.path.normcase(static_dir),
                         os.path.normcase(os.path.join(out, "qctl", "dashboard", "static")))
        shipped = sorted(os.listdir(static_dir)) if os.path.isdir(static_dir) else []
        self.assertEqual(shipped, sorted(names.split()), "the install lacks the dashboard's static files")


def _version(text):
    """(major, minor) of a version string such as "65.5.0" or "70.1.0.post1"."""
    return tuple(int(n) for n in re.findall(r"\d+", text)[:2])

if __name__ == "__main__":
    unittest.main()
