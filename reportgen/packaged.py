"""Where the files that ship with the code are."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def templates_dir() -> Path:
    """The templates that belong to this code: `reportgen/templates` in a wheel, else the `templates/` folder
    of the checkout it runs from (a second checkout of an editable install keeps its own templates), else
    where the package's resources say."""
    here = Path(__file__).resolve().parent
    for folder in (here / "templates", here.parent / "templates"):
        if (folder / "report.html.jinja2").is_file():
            return folder
    return Path(str(resources.files("reportgen.templates")))
