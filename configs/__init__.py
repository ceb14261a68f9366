"""The packaged default configuration files (YAML, one per mode, plus daemon.yaml)."""
