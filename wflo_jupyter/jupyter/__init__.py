"""The IPython layer: magics, display and the extension hooks. Thin: parse, call the
session, display."""
