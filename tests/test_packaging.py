"""Packaging: the wheel holds every package file (the GX suites of data_checks/ included), and `jmed validate`
works from an installed wheel, in a fresh interpreter that cannot see the source checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

import jmed
from jmed import checks

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("jmed", "data_checks")
# Named here (not only derived from the tree) so that a file lost from both the tree and the wheel fails too.
REQUIRED = {
    "jmed/__init__.py",
    "jmed/__main__.py",
    "jmed/cli.py",
    "jmed/checks.py",
    "jmed/presets.yaml",
    "jmed/accelerate/ddp.yaml",
    "jmed/accelerate/fsdp.yaml",
    "jmed/sample/LICENSE.md",
    "jmed/sample/train.jsonl",
    "jmed/sample/test.jsonl",
    "jmed/sample/instructions.jsonl",
    "jmed/sample/train_metadata.jsonl",
    "jmed/sample/test_metadata.jsonl",
    "data_checks/__init__.py",
    "data_checks/questions.json",
    "data_checks/instructions.json",
}
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def package_files(root: Path) -> set[str]:
    """Every file of the packages under `root`, as paths relative to it (what the wheel must hold)."""
    return {
        p.relative_to(root).as_posix()
        for pkg in PACKAGES
        for p in (root / pkg).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1", GX_ANALYTICS_ENABLED="false", PYTHONNOUSERSITE="1", **extra
    )
    return env


def test_every_package_data_glob_matches_a_file():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert cfg["packages"]["find"]["include"] == ["jmed*", "data_checks*"]
    globs = cfg["package-data"]
    assert sorted(globs) == ["data_checks", "jmed"]
    for pkg, patterns in globs.items():
        for pattern in patterns:
            assert sorted((ROOT / pkg).glob(pattern)), f"package-data {pkg}: {pattern!r} matches no file"
    # and every non-Python file of the packages is named by a glob (else the wheel would leave it out)
    data = {f for f in package_files(ROOT) if not f.endswith(".py")}
    covered = {
        p.relative_to(ROOT).as_posix()
        for pkg, patterns in globs.items()
        for pattern in patterns
        for p in (ROOT / pkg).glob(pattern)
    }
    assert data - covered == set()


def test_suites_found_from_the_checkout_outside_its_folder(tmp_path):
    """In the source checkout (the Makefile's `pip install -e`), data_checks is the repository's folder, found
    from any working directory; a stale editable install (made before data_checks was a package) fails here:
    re-run `make install` (or `pip install -e .`)."""
    if Path(jmed.__file__).resolve().parent != ROOT / "jmed":
        pytest.skip("jmed is not imported from this checkout")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import data_checks, jmed.checks as c; print(data_checks.__file__); "
            "print(c.CHECKS_DIR); print(sorted(p.name for p in c.CHECKS_DIR.iterdir()))",
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        str(ROOT / "data_checks" / "__init__.py"),
        str(ROOT / "data_checks"),
        str(["__init__.py", "instructions.json", "questions.json"]),
    ]
    assert sorted(p.name for p in checks.CHECKS_DIR.glob("*.json")) == ["instructions.json", "questions.json"]


@pytest.mark.slow
def test_wheel_ships_the_suites_and_validate_runs_from_it(tmp_path):
    # Build from a copy of the sources: setuptools writes build/ and *.egg-info beside pyproject.toml.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=IGNORED)
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        env=clean_env(),
        timeout=300,
    )
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name for w in wheels] == [f"jmed-{jmed.__version__}-py3-none-any.whl"]
    wheel = wheels[0]

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"jmed-{jmed.__version__}.dist-info"
        shipped = {n for n in names if not n.startswith(info + "/")}
        assert REQUIRED <= shipped, sorted(REQUIRED - shipped)
        assert shipped == package_files(src)  # every package file, nothing else (no tests/, no build leftovers)
        assert sorted(n for n in names if n.startswith(info + "/")) == sorted(
            f"{info}/{n}" for n in ("METADATA", "RECORD", "WHEEL", "entry_points.txt", "top_level.txt")
        )
        assert z.read(f"{info}/top_level.txt").decode().split() == ["data_checks", "jmed"]
        assert "jmed = jmed.cli:run" in z.read(f"{info}/entry_points.txt").decode().splitlines()
        for suite in ("questions.json", "instructions.json"):
            assert z.read(f"data_checks/{suite}") == (ROOT / "data_checks" / suite).read_bytes()

    # A fresh interpreter: the wheel installed into its site-packages, the dependencies of .venv visible
    # through a .pth path line (a plain path: the .pth files in there, jmed's editable finder among them,
    # are not processed), the checkout neither on sys.path nor the working directory.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
            env=clean_env(),
        ).stdout.strip()
    )
    assert site.is_relative_to(venv), site
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-compile",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        env=clean_env(),
        timeout=300,
    )
    deps = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (site / "zz-jmed-test-deps.pth").write_text("".join(f"{d}\n" for d in deps), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", JMED_CACHE=str(tmp_path / "cache"))

    probe = subprocess.run(
        [
            python,
            "-c",
            "import sys, jmed, data_checks, jmed.checks as c; print(jmed.__file__); "
            "print(data_checks.__file__); print(c.CHECKS_DIR); "
            "print(any('editable' in type(f).__name__.lower() or 'editable' in type(f).__module__ "
            "for f in sys.meta_path)); print(sorted(m for m in sys.modules if 'editable' in m)); "
            "print('\\n'.join(sys.path))",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[:5] == [
        str(site / "jmed" / "__init__.py"),
        str(site / "data_checks" / "__init__.py"),
        str(site / "data_checks"),
        "False",
        "[]",
    ]
    path = lines[5:]
    assert str(site) in path and path.index(str(site)) < path.index(deps[0])  # the wheel's jmed comes first
    assert not [p for p in path if p and Path(p).resolve() in (ROOT, ROOT / "jmed", ROOT / "data_checks")]

    test, instructions = site / "jmed" / "sample" / "test.jsonl", site / "jmed" / "sample" / "instructions.jsonl"
    report = tmp_path / "report" / "report.json"
    out = subprocess.run(
        [python, "-m", "jmed", "validate", "--no-log", str(test), str(instructions), "--report", str(report)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    expected = checks.validate([str(test), str(instructions)])  # the checkout's code on the same files
    assert expected.success
    assert out.stdout.splitlines() == expected.summary().splitlines() + [
        f"report: {report} and {report.with_suffix('.html')}"
    ]
    assert out.stdout.splitlines()[1:3] == [
        f"  data: sample test, {expected.datasets[0]['questions']} records, {expected.datasets[0]['digest'][:12]} "
        f"(igakuqa, every record of {test})",
        f"  data: sample instructions, {expected.datasets[1]['questions']} records, "
        f"{expected.datasets[1]['digest'][:12]} (instructions, every record of {instructions})",
    ]
    got = json.loads(report.read_text(encoding="utf-8"))["expectations"]
    suites = {
        n: json.loads((ROOT / "data_checks" / f"{n}.json").read_text(encoding="utf-8"))
        for n in ("questions", "instructions")
    }
    assert got == [
        {
            "dataset": str(test),
            "suite": suites["questions"]["name"],
            "success": True,
            "evaluated": len(suites["questions"]["expectations"]),
            "unsuccessful": 0,
            "errors": 0,
            "warnings": 0,
        },
        {
            "dataset": str(instructions),
            "suite": suites["instructions"]["name"],
            "success": True,
            "evaluated": len(suites["instructions"]["expectations"]),
            "unsuccessful": 0,
            "errors": 0,
            "warnings": 0,
        },
    ]
    assert sorted(p.name for p in work.iterdir()) == []  # --no-log: nothing written where it ran
