"""A plug-in as a pip-installed package would ship one, with records in three modules named by this
distribution's entry points (`reportgen_demo_plugin-0.1.dist-info/entry_points.txt`): a method (`method`, which
imports no torch, as reportgen's own method records), and a model source and a stage (`parts`). The tests put this
folder on PYTHONPATH; reportgen imports nothing of it until it reads the entry points."""
