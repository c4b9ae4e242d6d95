"""Small, genuinely trained demo models that ship with reportgen (see `reportgen.demo.shapes`)."""
