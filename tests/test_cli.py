"""`python -m cqloop`: `run` behaves as plain `python` does for the program it runs, with
asyncio's loop made by cqloop; the usage and exit statuses of the command line.

Each case runs the same program twice in subprocesses, once as `python script.py ...` (or
`python -m module ...`) and once as `python -m cqloop run ...`, and compares what the program
saw and how the process ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cqloop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The program: what python's contract for __main__ gives it, and the loop asyncio.run made.
REPORT = textwrap.dedent(
    """
    import asyncio, json, sys
    from helper import HELPER  # a sibling module: needs sys.path[0] to be this folder

    async def kind():
        return type(asyncio.get_running_loop()).__module__

    if __name__ == "__main__":
        print(json.dumps({
            "path0": sys.path[0],
            "file": __file__,
            "argv": sys.argv,
            "name": __name__,
            "spec": None if __spec__ is None else __spec__.name,
            "main_file": getattr(sys.modules["__main__"], "__file__", None),
            "helper": HELPER,
            "loop": asyncio.run(kind()),
        }))
    """
)


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONSTARTUP", None)
    return subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def cqloop_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return python("-m", "cqloop", "run", *args, cwd=cwd)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    """tmp_path/app/{__init__,main,helper}.py; returns tmp_path (the folder to run from)."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "main.py").write_text(REPORT)
    (app / "helper.py").write_text("HELPER = 'sibling'\n")
    return tmp_path


def same_report(
    plain: subprocess.CompletedProcess[str], ours: subprocess.CompletedProcess[str]
) -> dict[str, object]:
    """The program's reports under python and under cqloop agree but for the loop; returns
    cqloop's."""
    assert plain.returncode == ours.returncode == 0, (plain.stderr, ours.stderr)
    expected, got = json.loads(plain.stdout), json.loads(ours.stdout)
    assert expected.pop("loop") == "asyncio.unix_events"
    assert got.pop("loop") == "cqloop.loop"
    assert got == expected
    return got


def write_program(folder: Path, body: str) -> str:
    (folder / "prog.py").write_text(textwrap.dedent(body))
    return "prog.py"


def test_run_script_sees_what_python_script_sees(program: Path):
    got = same_report(
        python("app/main.py", "a", "--help", cwd=program),
        cqloop_run("app/main.py", "a", "--help", cwd=program),
    )
    assert got["path0"] == str((program / "app").resolve())
    assert got["argv"] == ["app/main.py", "a", "--help"]


def test_run_module_sees_what_python_m_sees(program: Path):
    # `python -m app.main` puts the current folder first, so the sibling import needs the
    # package's folder too: run it as python would, from inside app/.
    app = program / "app"
    got = same_report(python("-m", "main", "x", cwd=app), cqloop_run("-m", "main", "x", cwd=app))
    assert got["spec"] == "main"


def test_run_uncaught_exception_prints_the_same_traceback_and_exits_1(tmp_path: Path):
    script = write_program(
        tmp_path,
        """
        def fail():
            raise ValueError("boom")
        fail()
        """,
    )
    plain = python(script, cwd=tmp_path)
    ours = cqloop_run(script, cwd=tmp_path)
    assert plain.returncode == ours.returncode == 1
    assert ours.stderr == plain.stderr
    assert "ValueError: boom" in ours.stderr


def test_run_module_exception_traceback_has_only_the_programs_frames(tmp_path: Path):
    (tmp_path / "failing.py").write_text("raise LookupError('missing')\n")
    plain = python("-m", "failing", cwd=tmp_path)
    ours = cqloop_run("-m", "failing", cwd=tmp_path)
    assert plain.returncode == 1
    assert ours.returncode == 1
    assert ours.stderr.splitlines()[-2:] == plain.stderr.splitlines()[-2:]
    assert "cqloop" not in ours.stderr and "runpy" not in ours.stderr


@pytest.mark.parametrize("code", [0, 3, "message"])
def test_run_system_exit_keeps_its_status(tmp_path: Path, code: int | str):
    script = write_program(tmp_path, f"import sys; sys.exit({code!r})")
    plain = python(script, cwd=tmp_path)
    ours = cqloop_run(script, cwd=tmp_path)
    assert ours.returncode == plain.returncode
    assert ours.stderr == plain.stderr


def test_run_keyboard_interrupt_ends_by_sigint_as_python_does(tmp_path: Path):
    script = write_program(
        tmp_path,
        """
        import asyncio
        async def main():
            raise KeyboardInterrupt
        asyncio.run(main())
        """,
    )
    plain = python(script, cwd=tmp_path)
    ours = cqloop_run(script, cwd=tmp_path)
    assert plain.returncode == ours.returncode == -2  # a shell reports 130
    assert ours.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1] == "KeyboardInterrupt"


def test_run_missing_script_fails_as_python_does(tmp_path: Path):
    plain = python("nope.py", cwd=tmp_path)
    ours = cqloop_run("nope.py", cwd=tmp_path)
    assert plain.returncode == ours.returncode == 2
    assert "No such file or directory" in ours.stderr


@pytest.mark.parametrize(
    "args",
    [["--help"], ["-h"], ["run", "--help"], ["run", "-h"], ["bench", "--help"]],
    ids=" ".join,
)
def test_help_prints_usage_and_exits_0(tmp_path: Path, args: list[str]):
    proc = python("-m", "cqloop", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


@pytest.mark.parametrize(
    "args",
    [[], ["frob"], ["--frob"], ["run"], ["run", "--frob"], ["run", "-m"]],
    ids=lambda args: " ".join(args) or "nothing",
)
def test_bad_command_lines_exit_2_with_a_message(tmp_path: Path, args: list[str]):
    proc = python("-m", "cqloop", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "usage" in proc.stderr.lower()


def test_importing_an_unbuilt_source_tree_says_so(tmp_path: Path):
    # A copy of the package without its compiled core, first on sys.path: what running from
    # the root of a fresh clone imports.
    source = Path(ROOT) / "cqloop"
    for path in source.rglob("*.py"):
        target = tmp_path / "cqloop" / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    proc = subprocess.run(
        [sys.executable, "-c", "import cqloop"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "cqloop's compiled core is missing" in proc.stderr
    assert str(tmp_path / "cqloop") in proc.stderr


def test_a_folder_named_cqloop_without_init_does_not_shadow_the_install(tmp_path: Path):
    # What the folder holding a clone named `cqloop` looks like to Python: a folder of that
    # name with no __init__.py. A regular install wins over such a namespace folder; the
    # editable install must too (setup.py's INSTALLED_FIRST), not import an empty package.
    (tmp_path / "cqloop" / "docs").mkdir(parents=True)
    (tmp_path / "cqloop" / "README.md").write_text("a checkout\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import cqloop; print(cqloop.__file__); print(cqloop.run)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == cqloop.__file__
