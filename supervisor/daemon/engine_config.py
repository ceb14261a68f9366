"""``daemon.yaml`` ``engine``: which coordination core the daemon serves.

``engine: {kind: local}`` (the default) is the in-process actor system and needs nothing
else. ``engine: {kind: nats, servers: [...]}`` spreads the daemon over a NATS cluster
(:mod:`modcoord.supervisor.daemon.nats`; docs/SCALING.md): every daemon serves the modules
of its own host and publishes their updates to JetStream, and partitions of the keys are
debounced and batched by whichever daemon owns them. Nothing here imports nats-py: the
settings are validated the same way whether or not it is installed (the daemon refuses to
start with ``kind: nats`` when it is missing, naming the extra to install).

On failure: a bad value is a :class:`~modcoord.actors.errors.ConfigError` naming
``daemon.yaml``, the dotted key (``engine.servers``...) and the problem, like every other key.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modcoord.supervisor.daemon.nats.partitions import DEFAULT_PARTITIONS, MAX_PARTITIONS

__all__ = ["EngineSettings", "NatsTls"]

_URL = re.compile(r"^(nats|tls)://[A-Za-z0-9._\-\[\]:]+(:\d{1,5})?$")
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NatsTls(_Strict):
    """``engine.tls``: files for a TLS connection to the NATS servers (all optional)."""

    ca: str | None = Field(None, min_length=1)
    cert: str | None = Field(None, min_length=1)
    key: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _pair(self) -> NatsTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both files or neither")
        return self


class EngineSettings(_Strict):
    """``daemon.yaml`` ``engine`` (every key: docs/REFERENCE.md).

    Attributes:
        kind: ``local`` (default) or ``nats``.
        servers: NATS URLs (``nats://host:port``); required with ``kind: nats``.
        credentials: a NATS ``.creds`` file (optional).
        tls: TLS files (optional).
        partitions: key partitions (the same on every daemon of a cluster, fixed for the
            cluster's lifetime: keys are never rehashed).
        replicas: JetStream replicas of the stream and buckets (3 for a 3-node cluster).
        instance_id: this daemon's name in the cluster (default ``<hostname>-<pid>``).
        flush_ms: the agent's fold window: updates of one key within it collapse.
        max_buffered: updates the agent holds until JetStream acknowledges them; beyond it
            publishes are refused with QueueFullError.
        ack_wait_s: JetStream redelivers an update its owner did not acknowledge in time.
        delivery_timeout_s: how long an owner waits for an agent to take a batch.
        start_timeout_s: how long the daemon tries to reach NATS at start (it then exits).
    """

    kind: Literal["local", "nats"] = "local"
    servers: tuple[str, ...] = ()
    credentials: str | None = Field(None, min_length=1)
    tls: NatsTls | None = None
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, le=MAX_PARTITIONS)
    replicas: int = Field(3, ge=1, le=5)
    instance_id: str | None = None
    flush_ms: float = Field(3.0, ge=0, le=1000)
    max_buffered: int = Field(100_000, ge=1, le=10_000_000)
    ack_wait_s: float = Field(5.0, ge=1, le=600)
    delivery_timeout_s: float = Field(2.0, gt=0, le=60)
    start_timeout_s: float = Field(30.0, ge=1, le=600)

    @field_validator("servers", mode="before")
    @classmethod
    def _list(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("servers")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [u for u in value if not _URL.match(u)]
        if bad:
            raise ValueError(f"not a NATS URL: {bad[0]!r} (write nats://host:port)")
        return value

    @field_validator("instance_id")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _INSTANCE_ID.match(value):
            raise ValueError("must be 1-64 letters, digits, '-' or '_' (it names NATS "
                             "subjects and keys)")
        return value

    @model_validator(mode="after")
    def _servers_for_nats(self) -> EngineSettings:
        if self.kind == "nats" and not self.servers:
            raise ValueError("kind: nats needs servers: a list of nats://host:port URLs")
        return self
