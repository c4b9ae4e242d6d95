"""A wheel built from the repo carries the templates, and an installed copy builds a report from elsewhere."""
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_templates_and_builds_from_another_folder(tmp_path, project):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("reportgen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("reportgen/templates/report.html.jinja2", "reportgen/templates/macros.html.jinja2",
                     "reportgen/templates/style.css", "reportgen/templates/report.js",
                     "reportgen/templates/sections/summary.html.jinja2"):
        assert required in names, required
    # install it (no deps: the test environment has them) into a venv and build from an unrelated folder;
    # --ignore-installed because CI has already installed reportgen into the site-packages the venv can see

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--ignore-installed", "-q",
                    str(wheel)],
                   check=True, capture_output=True)
    config = project.write()
    done = subprocess.run([str(env_dir / "bin" / "reportgen"), "build", str(config), "-q"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (project.root / "out" / "report.html").stat().st_size > 1000
    where = subprocess.run([str(python), "-c", "import reportgen.render as r; print(r.templates_dir())"],
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(env_dir) in where.stdout  # the installed templates, not the repo's
