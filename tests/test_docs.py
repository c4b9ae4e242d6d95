"""The documentation follows the code: docs/config.md is the schema's page, docs/config-example.yaml validates and
lists every key, and the README's and pages' links lead to files that exist."""
import dataclasses
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from reportgen.cli import main
from reportgen.config import Config, parse_config, rules_of, yaml_fields
from reportgen.reference import REGENERATE, leaf_keys, render, sections

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE = DOCS / "config-example.yaml"
# a commented-out key ("# name: resnet18", "#   head_fusion: mean"); a line saying what it needs starts in capitals
COMMENTED_KEY = re.compile(r"^([ \t]*)# ([ \t]*[a-z_]+:([ \t].*)?)$", re.MULTILINE)


def test_the_config_page_is_the_schema():
    assert (DOCS / "config.md").read_text(encoding="utf-8") == render(), \
        f"docs/config.md differs from the schema: regenerate it with `{REGENERATE}`"


def test_the_page_has_a_section_for_every_mapping_and_a_row_for_each_of_its_keys():
    page = render()
    for cls, path in sections().items():
        heading = f"## `{path}`\n" if path else "## The top level\n"
        body = page[page.index(heading):].split("\n## ")[0]
        assert [f"| `{key}` |" for key in yaml_fields(cls) if f"| `{key}` |" not in body] == [], path
    assert {".".join(p[:-1]) for p in leaf_keys() if len(p) > 1} <= set(sections().values()) | {
        "analyses.gradients.targets"}  # a mapping used twice has one section, linked from both keys
    assert "| `alpha` | number | `0.5` | between 0 and 1 | heat-map weight in overlays |" in page
    assert "| `order` | `index`, `mean`, `max` | `index` |" in page
    assert "| `targets` | mapping ([`analyses.cam.targets`](#analysescamtargets)) |" in page


def test_descriptions_come_from_metadata_or_source_and_a_made_class_has_none():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        depth: int = 3  # how deep
        width: float = dataclasses.field(default=0.5, metadata={"doc": "from metadata"})  # not this comment

    Made = dataclasses.make_dataclass("Made", [("inner", Inner, dataclasses.field(default_factory=Inner)),
                                               ("flag", bool, False)])
    page = render(Made)
    assert "| `flag` | true / false | `false` |  |  |" in page  # no source: no description, no error
    assert "| `depth` | integer | `3` |  | how deep |" in page and "| from metadata |" in page
    assert "## `inner`" in page and "not this comment" not in page


def commented_keys_uncommented(text: str) -> str:
    return COMMENTED_KEY.sub(r"\1\2", text)


def key_paths(data, prefix=()):
    for key, value in data.items():
        yield prefix + (key,), value
        if isinstance(value, dict):
            yield from key_paths(value, prefix + (key,))


def test_the_example_lists_every_key_of_the_schema():
    written = dict(key_paths(yaml.safe_load(commented_keys_uncommented(EXAMPLE.read_text(encoding="utf-8")))))
    # a key is there, or a section above it is written in a shorthand form (`targets: top1`, `normalize: imagenet`)
    missing = [".".join(path) for path in leaf_keys()
               if path not in written and not any(not isinstance(written.get(path[:i]), (dict, type(None)))
                                                  for i in range(1, len(path)))]
    assert not missing, f"docs/config-example.yaml lacks {missing}"
    # the commented-out sections are valid as written (the model keys of other sources aside)
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(commented_keys_uncommented(text)) | {"model": yaml.safe_load(text)["model"]}
    config = parse_config(yaml.safe_dump(data), base_dir=DOCS, origin=EXAMPLE.name)
    assert config.analyses.attention is not None and config.inputs.sample.per_class == 10
    assert [name for name, _ in config.output.attach.items()] == ["mlflow", "wandb", "clearml", "tensorboard"]
    known = {path[:i] for path in leaf_keys() for i in range(1, len(path) + 1)}
    assert not [path for path in written if path not in known and path[:-1] in known and path[:-1] not in (
        ("model", "kwargs"),)], "docs/config-example.yaml has keys the schema does not"


def default_of(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def test_the_example_validates_and_shows_defaults_unless_it_says_e_g():
    text = EXAMPLE.read_text(encoding="utf-8")
    config = parse_config(text, base_dir=DOCS, origin=EXAMPLE.name)
    assert config.analyses.attention is None and not config.output.attach  # commented out: they need more
    checked = 0
    for path, value in key_paths(yaml.safe_load(text)):
        if isinstance(value, dict) or "kwargs" in path:  # a section's keys are checked one by one
            continue
        obj, tp = config, Config
        for key in path:
            f = yaml_fields(tp)[key]
            obj = getattr(obj, f.name)
            tp = type(obj)
        line = text.splitlines()[config.lines.lines[path] - 1]
        if "e.g." in line or rules_of(f).kind:  # an example value, or a path resolved against docs/
            continue
        assert obj == default_of(f), f"{'.'.join(path)} is {obj!r}, its default {default_of(f)!r}: say `e.g.`"
        checked += 1
    assert checked > 60

    result = CliRunner().invoke(main, ["validate", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "stages: summary, dataset, kernels, feature_maps, cam, gradients, evaluation, insight, training." in result.output


def test_links_between_the_readme_and_the_pages_lead_to_files():
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    assert {p.name for p in pages} >= {"README.md", "config.md", "methods.md", "evaluation.md", "transformers.md",
                                       "datasets.md", "trackers.md", "extending.md"}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("config.md", "methods.md", "evaluation.md", "transformers.md", "datasets.md", "trackers.md",
                 "extending.md", "config-example.yaml"):
        assert f"(docs/{name})" in readme, f"the README does not link docs/{name}"
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_the_readme_config_parses_and_runs_the_stages_it_names():
    block = re.search(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.DOTALL).group(1)
    config = parse_config(block, base_dir=ROOT, origin="README.md")
    assert config.analyses.enabled() == ["summary", "feature_maps", "cam", "gradients"]
    assert config.analyses.cam.methods == ("gradcam", "layercam", "scorecam")


def test_the_readmes_method_table_is_the_registrys():
    """The README's method table is generated from the method registry (`python -m reportgen.reference methods`):
    every built-in method is a row with its id, and the block equals what the registry writes now."""
    from reportgen.methods import BUILT_IN
    from reportgen.reference import METHODS_BEGIN, METHODS_END, method_table

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(METHODS_BEGIN), readme.index(METHODS_END) + len(METHODS_END)
    assert readme[start:end] + "\n" == method_table(), "regenerate it: python -m reportgen.reference methods"
    rows = [line for line in method_table().splitlines() if line.startswith("| `")]
    assert sorted(line.split(" | ")[2].strip("`") for line in rows) == sorted(m.id for m in BUILT_IN)
