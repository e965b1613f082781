"""Test a Python project inside a guest, the way CI would: copy the tree in, install it in a
virtualenv there, run the project's own pytest and bring its JUnit XML back.

Copy this file to start: change PROJECT and the commands, keep the shape.
"""
import xml.etree.ElementTree as ET
from pathlib import Path

PROJECT = Path(__file__).parent / "sample_project"


def test_project_suite_passes_in_the_guest(guest, tmp_path):
    # one tar stream over SSH; what a checkout has beside the code stays out
    guest.put(PROJECT, "/tmp/project", exclude=[".git", "__pycache__", "*.egg-info", ".venv", "build"])
    # --system-site-packages: the image's pytest; with a package index, pip install it instead
    guest.run("python3 -m venv --system-site-packages /tmp/venv", check=True)
    guest.run("/tmp/venv/bin/pip install --no-index --no-build-isolation --no-deps .",
              cwd="/tmp/project", check=True, timeout=600)
    run = guest.run("/tmp/venv/bin/python -m pytest -q --junitxml=/tmp/junit.xml tests",
                    cwd="/tmp/project", env={"PYTHONDONTWRITEBYTECODE": "1"})
    guest.get("/tmp/junit.xml", tmp_path / "junit.xml")

    suite = ET.parse(tmp_path / "junit.xml").getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    print(f"\nin {guest.os}: {suite.get('tests')} tests, {suite.get('failures')} failures")
    assert run.ok, run.stdout + run.stderr
    assert (int(suite.get("tests")), int(suite.get("failures")), int(suite.get("errors"))) == (3, 0, 0)
