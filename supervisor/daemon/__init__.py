"""The daemon program: process and signals (``process``), the socket server and its flow
control (``server``), the controller and the coordinator façade, config loading and live
reload, structured logs, the Prometheus exposition and systemd integration."""
