"""The README's commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci_lines if line.startswith("python3 -m venv"))
    assert command in (ROOT / "README.md").read_text().splitlines()
    assert "pytest" in command
    timm_command = next(line for line in ci_lines if line.startswith("python3 -m venv .venv-timm"))
    assert timm_command in (ROOT / "README.md").read_text().splitlines()


def test_readme_shows_the_demo_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "infobatch demo" in readme
