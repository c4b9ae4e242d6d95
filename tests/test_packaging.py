"""A wheel built from the repo carries the templates, and an installed copy builds a report from elsewhere."""
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def running_site_dirs() -> list[str]:
    """The site-packages folders the running interpreter imports from (torch and friends), whether it is a
    system Python, a venv with or without system site packages, or one with a user site."""
    dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    on_path = {os.path.realpath(p) for p in sys.path if p}
    return [d for d in dirs if os.path.isdir(d) and os.path.realpath(d) in on_path]


def build_wheel(dist: Path) -> None:
    """With the running environment's setuptools (offline, fast); where that cannot build wheels (a venv made
    with pip's bundled setuptools < 70.1 and no `wheel` package), in pip's isolated build environment."""
    command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(dist)]
    local = subprocess.run(command + ["--no-build-isolation"], capture_output=True, text=True)
    if local.returncode != 0:
        isolated = subprocess.run(command, capture_output=True, text=True)
        assert isolated.returncode == 0, f"{local.stderr[-2000:]}\n{isolated.stderr[-2000:]}"


def test_wheel_contains_templates_and_builds_from_another_folder(tmp_path, project):
    build_wheel(tmp_path / "dist")
    (wheel,) = (tmp_path / "dist").glob("reportgen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("reportgen/templates/report.html.jinja2", "reportgen/templates/macros.html.jinja2",
                     "reportgen/templates/style.css", "reportgen/templates/report.js",
                     "reportgen/templates/sections/summary.html.jinja2"):
        assert required in names, required
    # install it (no deps: the running environment has them) into a fresh venv and build from an unrelated
    # folder. The venv sees no system site packages (those are the BASE interpreter's, which may lack torch
    # when the tests run inside a venv); a .pth file adds the running interpreter's site dirs after its own
    # (the wheel's reportgen comes first). --ignore-installed: the running environment may have reportgen
    # installed already (an editable install's finder comes after the path's own packages).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    nested_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                      capture_output=True, text=True, check=True).stdout.strip())
    (nested_site / "outer-site-packages.pth").write_text(  # addsitedir: their own .pth files count too
        "".join(f"import site; site.addsitedir({d!r})\n" for d in running_site_dirs()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--ignore-installed", "-q", str(wheel)], check=True, capture_output=True, env=env)
    config = project.write()
    done = subprocess.run([str(env_dir / "bin" / "reportgen"), "build", str(config), "-q"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert (project.root / "out" / "report.html").stat().st_size > 1000
    where = subprocess.run([str(python), "-c", "import reportgen.render as r; print(r.templates_dir())"],
                           cwd=tmp_path, capture_output=True, text=True, check=True, env=env)
    installed = Path(where.stdout.strip()).resolve()
    assert installed.is_relative_to(env_dir.resolve()), installed  # the installed templates, not the repo's
