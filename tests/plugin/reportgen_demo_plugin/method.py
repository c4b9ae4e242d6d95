"""The plug-in's method record: no torch imported here (as reportgen's own records), the computation named by a
"module:function" string and imported on first use."""
from __future__ import annotations

from reportgen.methods import Method

METHOD = Method(id="abscam", family="cam", title="Abs-CAM", needs=frozenset({"activations", "gradients"}),
                compute="reportgen_demo_plugin.cam:abscam", note="a plug-in's CAM")
