"""The wire protocol shared by the client and the daemon: framing, the calls, limits,
module descriptions and where the socket lives. It imports neither the daemon nor the
client."""
