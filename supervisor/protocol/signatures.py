"""The call table's client view, without msgspec: GENERATED, do not edit.

Written from :mod:`modcoord.supervisor.protocol.calls` by
``python -m modcoord.supervisor.protocol.gen_signatures`` (see there why it exists); a test
fails when it differs from what the table gives. What the entries mean:
:mod:`modcoord.supervisor.protocol.signature`.
"""

# ruff: noqa: E501

from __future__ import annotations

from typing import Final

from modcoord.supervisor.protocol.signature import (
    DEFAULT,
    FACTORY,
    REQUIRED,
    UNSET,
    CallSignature,
)

PROTOCOL_VERSION: Final = 1

CALLS: Final[dict[str, CallSignature]] = {
    'hello': CallSignature(
        'hello',
        (('client', DEFAULT, ''), ('pid', DEFAULT, 0), ('protocol', DEFAULT, 0)),
        'data',
        ('InvalidMessageError', 'ProtocolVersionError'),
        '{pid, mode, max_frame_bytes, version, protocol}',
        'Introduce the client; the first request on a connection. A client announcing another protocol version is refused (ProtocolVersionError naming both).',
    ),
    'register': CallSignature(
        'register',
        (('module_id', REQUIRED, None), ('name', UNSET, None), ('supported_modes', UNSET, None), ('subscribe', FACTORY, None), ('has_metrics', DEFAULT, False)),
        'data',
        ('InvalidMessageError',),
        '{module_id, mode, strategy}',
        'Register a module on this connection; it then receives the batches of the modules it subscribes to and the mode-change callbacks.',
    ),
    'unregister': CallSignature(
        'unregister',
        (('module_id', REQUIRED, None),),
        'data',
        ('InvalidMessageError',),
        '{module_id}',
        'Unregister a module registered on this connection.',
    ),
    'publish': CallSignature(
        'publish',
        (('module_id', REQUIRED, None), ('key', REQUIRED, None), ('payload', REQUIRED, None), ('priority', DEFAULT, 'medium')),
        'data',
        ('InvalidMessageError', 'QueueFullError', 'ActorStoppedError'),
        "the update's sequence number",
        'Publish one update of a module registered on this connection; it is debounced, cached and batched to the subscribers.',
    ),
    'coordinate': CallSignature(
        'coordinate',
        (('mode', REQUIRED, None), ('context', DEFAULT, None)),
        'data',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        '{mode, strategy, results, errors, cached, latency_ms}',
        'Run a coordination round: every module supporting the mode gets on_mode_change; a repeated round may be answered from the cache.',
    ),
    'set_mode': CallSignature(
        'set_mode',
        (('mode', REQUIRED, None),),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        '{mode, previous, strategy, results, errors}',
        "Switch the daemon's mode (actors reconfigured live, every module told).",
    ),
    'status': CallSignature(
        'status',
        (),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        'the status map (as `modcoord status --json`)',
        "The daemon's status.",
    ),
    'insights': CallSignature(
        'insights',
        (),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        '{insights: [...], recommendations: [...]}',
        "The monitor's insights and recommendations.",
    ),
    'history': CallSignature(
        'history',
        (('metrics', DEFAULT, None), ('since_s', DEFAULT, 3600.0)),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        '{resolution_s, since_s, now, state, columns, series: {metric: [[ts, min, max, mean, last], ...]}}',
        "The performance history's series (as `modcoord history --json`).",
    ),
    'dashboard': CallSignature(
        'dashboard',
        (),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        '{url, address, started, token_file, error}',
        'Serve the dashboard page if it is not served yet (dashboard.enabled: false, or it could not bind before) and answer its URL with the access token; `error` says why it cannot be served (then `url` is null).',
    ),
    'optimize': CallSignature(
        'optimize',
        (),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        'what was flushed, delivered and freed',
        'Flush pending debounces and batches, clear the cache, run memory cleanup.',
    ),
    'actor': CallSignature(
        'actor',
        (('actor', REQUIRED, None), ('method', REQUIRED, None), ('args', DEFAULT, None), ('kwargs', DEFAULT, None)),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'ActorCrashedError', 'CallTimeoutError'),
        "the actor method's result",
        'Call a public method of one actor (see the actor methods).',
    ),
    'reload': CallSignature(
        'reload',
        (),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        '{ok, changed, error, pending}',
        'Re-read the config directory now.',
    ),
    'config': CallSignature(
        'config',
        (),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        'the effective configuration',
        'The effective configuration.',
    ),
    'metrics': CallSignature(
        'metrics',
        (),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        'the Prometheus text exposition',
        'The metrics in the Prometheus text format.',
    ),
    'crash': CallSignature(
        'crash',
        (('actor', REQUIRED, None), ('kind', DEFAULT, 'exception'), ('kill', DEFAULT, False)),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        'null',
        'Fault injection: make an actor fail (refused unless the daemon enables it).',
    ),
    'stop': CallSignature(
        'stop',
        (),
        'control',
        ('InvalidMessageError', 'ActorStoppedError', 'CallTimeoutError'),
        '{stopping: true}',
        'Ask the daemon to stop gracefully.',
    ),
}

ACTOR_METHODS: Final[dict[str, tuple[str, ...]]] = {
    'debouncer': ('statistics', 'flush', 'cancel', 'pending'),
    'cache': ('statistics', 'clear', 'purge', 'shrink'),
    'batcher': ('statistics', 'flush', 'queue_depth'),
    'memory': ('statistics', 'force_cleanup'),
    'monitor': ('statistics', 'latencies', 'trim'),
}
