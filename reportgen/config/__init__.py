"""The YAML config: parsed with `yaml.safe_load`, validated into frozen dataclasses.

- `rules`: what a field accepts beyond its type (`setting(...)`: ranges, list lengths, path handling, method
  families, patterns);
- `convert`: YAML data -> the dataclasses, by type and rules; shorthand YAML forms (`targets: top1`,
  `normalize: imagenet`) live beside their class as `_from_yaml`, cross-field rules as `_validate`;
- `yamlfile`: reading the file safely, `--set`, the line of every key for messages;
- `schema` and `values`: the dataclasses; `registered`: the sections built from the registries (`model`: the
  keys every source shares plus each source's own, `analyses`: a key per stage, `output.attach`: a key per tracker);
- `starter.yaml`: what `reportgen init` writes.

Unknown keys, wrong types, out-of-range values and "Did you mean" hints all derive from the schema. Every error
names the key path, its line in the file (or "from --set") and the closest valid spelling. Importing this
package imports no torch: `reportgen --help` stays fast.
"""
from __future__ import annotations

from importlib import resources

from .convert import canonical_methods
from .rules import INT_LIMIT, Rules, Shorthand, rules_of, setting, yaml_fields
from .schema import Config, DetailConfig, DetectionConfig, InputsConfig, OutputConfig, ReportConfig, SampleConfig
from .values import LayerPattern, Normalize, Preprocess, TargetSpec
from .yamlfile import MAX_DEPTH, MAX_NODES, load_config, parse_config, parse_data


def __getattr__(name: str):
    """The classes built from the registries (ModelConfig, AnalysesConfig, AttachConfig) and every record's options
    class by its name (CamConfig, ...): on first use, so that importing the config imports no stage."""
    from .registered import options_class

    found = options_class(name) if name[:1].isupper() else None
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return found


STARTER = resources.files(__package__).joinpath("starter.yaml").read_text(encoding="utf-8")

__all__ = ["INT_LIMIT", "MAX_DEPTH", "MAX_NODES", "STARTER", "Config", "DetailConfig", "DetectionConfig", "InputsConfig",
           "LayerPattern",
           "Normalize", "OutputConfig", "Preprocess", "ReportConfig", "Rules", "SampleConfig", "Shorthand", "TargetSpec",
           "canonical_methods", "load_config", "parse_config", "parse_data", "rules_of", "setting", "yaml_fields"]
