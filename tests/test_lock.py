"""requirements.txt (what `make` installs, as CI tested it) agrees with pyproject.toml's ranges."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI's)

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked() -> dict[str, str]:
    """The lock's pins that apply to this interpreter and platform: name -> version."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = PIN.match(line)
        if m and (m.group(3) is None or Marker(m.group(3)).evaluate()):
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_every_range_of_pyproject_is_pinned_in_the_lock_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = locked()
    assert pins, "requirements.txt pins nothing"
    makefile = (ROOT / "Makefile").read_text()
    for extra in extras:  # make lock compiles every extra, so make installs them all
        assert f"--extra {extra}" in makefile, f"make lock leaves out the extra {extra!r}"
    checked = 0
    for text in project["dependencies"] + [r for reqs in extras.values() for r in reqs]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in requirements.txt: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}: run make lock"
        )
        for extra in req.extras:  # e.g. apache-beam[aws] brings boto3: the lock must hold what it brings
            assert extra != "aws" or "boto3" in pins, f"{req.name}[{extra}]'s packages are not in requirements.txt"
        checked += 1
    assert checked >= len(project["dependencies"])


def test_this_environment_is_the_lock():
    """What runs these tests is what the lock says (make installs it): else CI tested other versions."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for name, pinned in locked().items():
        try:
            have = version(name)
        except PackageNotFoundError:
            wrong.append(f"{name} missing (lock: {pinned})")
            continue
        if have != pinned:
            wrong.append(f"{name} {have} (lock: {pinned})")
    if wrong and not (Path(sys.prefix) / ".installed").exists():
        pytest.skip("not make's .venv: " + "; ".join(wrong[:3]))
    assert not wrong, "installed versions differ from requirements.txt: " + "; ".join(wrong)
