"""Example modcoord plugins (see docs/EXTENDING.md): an insight rule, a cache policy, a
batch processor and an exporter, plus plugins that raise or hang on purpose."""
