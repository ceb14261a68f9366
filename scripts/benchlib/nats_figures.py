"""``scripts/bench --engine nats``: the NATS engine against same-run baselines.

Each figure starts a fresh 3-node NATS cluster on loopback (``tests/nats_cluster.py``, the
test suite's cluster; the binary: ``$MODCOORD_NATS_SERVER``, ``nats-server`` on PATH or
``/usr/sbin/nats-server``) and detached daemons with ``engine: {kind: nats}``:

N1. **Delivered updates per second, 2 coordinator instances against 1** (the baseline):
    the same two publisher processes publish fresh keys for a while, both on the one daemon
    or one on each of two; a subscriber on the first daemon counts what arrives. The
    medians of :data:`N1_ROUNDS` rounds (each one run of both, in alternating order);
    target ``>= 1.5x``. ``--only 1`` measures just N1.
N2. **Cached ``coordinate`` p99 on the NATS engine** against the local engine's in the same
    run (one daemon each, the same module and context).
N3. **Failover**: a daemon holding pending (debounced) updates is SIGKILLed; the time from
    the kill until every accepted update reached the subscriber on the other daemon (the
    takeover, at most ``lease_s`` = 9 s, is inside it), over ``plan.rounds`` runs, and
    N4 the accepted updates lost (target 0).

N5. **10 hosts × 100 modules**: 10 daemons (separate runtime directories, as 10 hosts)
    on the cluster, 100 modules on each, every module on a connection of its own (1,000
    module connections, held by :data:`SIM_LOADERS` agent processes so that a 2-core
    machine can run it); a probe process coordinates (cached ``coordinate`` p99) on host 0,
    and N6 publishes on host 0 to a subscriber on host 9 (publish-to-delivery p99, the
    medium priority). The baseline is one local daemon with the same 1,000 modules and the
    same probe, in the same run; each figure is the median of :data:`SIM_ROUNDS` rounds'
    p99 (both series in the notes). ``--quick``: 4 hosts × 25 modules, fewer rounds.

On failure: a figure that cannot be measured raises :class:`~.common.BenchError` (its
row is then missing and the bench exits 1).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .agents import Agent
from .common import BenchError, Plan, Result, median, percentile, row, us
from .daemons import Daemon, make_config_dir

_TESTS = Path(__file__).resolve().parents[2] / "tests"
PARTITIONS = 16
PUBLISH_S = {True: 4.0, False: 10.0}
N1_ROUNDS = {True: 3, False: 5}
"""N1: rounds, each one run with 1 instance and one with 2 (by ``--quick``)."""
FAILOVER_UPDATES = 300
SIM_HOSTS = {True: 4, False: 10}
"""N5/N6: simulated hosts (daemons), by ``--quick``."""
SIM_MODULES = {True: 25, False: 100}
"""N5/N6: modules per host, each on a connection of its own."""
SIM_LOADERS = {True: 2, False: 5}
"""N5/N6: agent processes holding the modules' connections."""
SIM_ROUNDS = {True: 3, False: 5}
SIM_PUBLISH_N = {True: 40, False: 150}
"""N6: updates per priority per round (one every :data:`SIM_GAP_S`)."""
SIM_GAP_S = 0.01
SIM_IDLE_S = 5.0
"""N5: how long the idle daemons' and servers' CPU use is measured (reported in notes)."""
SIM_MODE = {"debounce": {"delay_ms": 20, "critical_delay_ms": 5, "max_wait_ms": 100},
            "batch": {"window_ms": 10}, "cache": {"ttl_ms": 120_000}}
"""N5/N6: the HYBRID settings of both engines' daemons (the cache outlives a round)."""


def _cluster_class() -> Any:
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    try:
        from nats_cluster import NatsCluster, find_nats_server
    except ImportError as exc:
        raise BenchError(f"--engine nats needs the repository's tests/nats_cluster.py "
                         f"({exc})") from None
    if find_nats_server() is None:
        raise BenchError("--engine nats needs nats-server: run scripts/get-tools (Debian: "
                         "apt-get install nats-server) or set $MODCOORD_NATS_SERVER")
    return NatsCluster


@dataclass(frozen=True)
class RateRun:
    """One N1 run: the delivered rate, and the CPUs (CPU seconds per second) that the
    whole machine, the daemons and the cluster's servers used while it ran."""

    rate: float
    machine: float
    daemons: float
    servers: float


class _CpuMeter:
    """CPU use from its creation to :meth:`read`: the machine's (every CPU's busy time),
    the ``daemons``' and the ``cluster``'s servers' (their processes' user + system)."""

    def __init__(self, daemons: list[Daemon], cluster: Any) -> None:
        self._daemons = daemons
        self._servers = [psutil.Process(cluster.pid(i)) for i in cluster.running()]
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return (time.monotonic(), busy, sum(d.cpu_seconds() for d in self._daemons),
                sum(float(sum(p.cpu_times()[:2])) for p in self._servers))

    def read(self) -> tuple[float, float, float]:
        """``(machine, daemons, servers)`` CPUs used since the meter was made."""
        (t0, m0, d0, s0), (t1, m1, d1, s1) = self._start, self._sample()
        elapsed = max(1e-9, t1 - t0)
        return (m1 - m0) / elapsed, (d1 - d0) / elapsed, (s1 - s0) / elapsed


class NatsBench:
    """The NATS figures (see the module docstring); a context manager that stops every
    process it started and removes its directory."""

    def __init__(self, plan: Plan, progress: Callable[[str], None], quick: bool) -> None:
        self.plan = plan
        self.progress = progress
        self.quick = quick
        self.root = Path(tempfile.mkdtemp(prefix="modcoord-bench-nats-"))
        self._ctx = multiprocessing.get_context("spawn")
        self._daemons: list[Daemon] = []
        self._clusters: list[Any] = []
        self._agents: list[Agent] = []
        self._n = 0
        self.failed = False
        self.only: set[str] = set()
        """``--only``: ``{"5"}`` measures just N5/N6 (the simulation); empty: all."""

    def __enter__(self) -> NatsBench:
        return self

    def __exit__(self, *exc: object) -> None:
        for agent in self._agents:
            agent.close()
        for d in self._daemons:
            d.stop()
        for c in self._clusters:
            c.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- pieces --

    def _name(self, what: str) -> str:
        self._n += 1
        return f"{what}{self._n}"

    def _cluster(self) -> Any:
        cluster = _cluster_class()(3, root=self.root / self._name("nats"))
        self._clusters.append(cluster)
        return cluster.start()

    def _daemon(self, cluster: Any | None, instance: str,
                hybrid: dict[str, dict[str, Any]] | None = None) -> Daemon:
        name = self._name(instance)
        daemon_cfg: dict[str, dict[str, Any]] = {}
        if cluster is not None:
            daemon_cfg["engine"] = {"kind": "nats", "servers": cluster.urls,
                                    "partitions": PARTITIONS, "replicas": 3,
                                    "instance_id": instance}
        d = Daemon(self.root, name, make_config_dir(self.root, name, hybrid, daemon_cfg))
        self._daemons.append(d)
        d.start()
        return d

    def _agent(self) -> Agent:
        agent = Agent(self._ctx, len(self._agents))
        self._agents.append(agent)
        return agent

    def _wait_split(self, daemons: list[Daemon], timeout: float = 60.0,
                    every: bool = True) -> None:
        """Wait until every daemon sees all of them and owns some partitions (with
        ``every`` false: not necessarily: 16 partitions hashed over 10 daemons leave
        some without), and together they own each partition once.

        Raises:
            BenchError: not within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            engines = [d.status()["engine"] for d in daemons]
            owned = [set(e["partitions"]["owned"]) for e in engines]
            seen = all(len(e["instances"]) == len(daemons) for e in engines)
            if seen and (all(owned) or not every) and \
                    sum(map(len, owned)) == PARTITIONS and \
                    set().union(*owned) == set(range(PARTITIONS)):
                return
            time.sleep(0.2)  # quiet-period: polling the daemons' status
        raise BenchError(f"the partitions did not split over {len(daemons)} daemons "
                         f"within {timeout} s")

    def _release(self, *agents: Agent) -> None:
        for a in agents:
            a.close()
            self._agents.remove(a)

    def _stop(self, *daemons: Daemon) -> None:
        for d in daemons:
            d.stop()

    # -- figures --

    def _delivered_rate(self, instances: int) -> RateRun:
        cluster = self._cluster()
        hybrid = {"debounce": {"delay_ms": 20, "critical_delay_ms": 10, "max_wait_ms": 100}}
        daemons = [self._daemon(cluster, f"tp{i}", hybrid) for i in range(instances)]
        self._wait_split(daemons)
        sink, pubs = self._agent(), [self._agent(), self._agent()]
        try:
            sink.call("register", runtime=daemons[0].runtime_str, module_ids=["sink"],
                      subscribe=["pub0", "pub1"])
            sink.call("sink_arm", expected=10**12)
            for i, p in enumerate(pubs):
                p.call("register", runtime=daemons[i % instances].runtime_str,
                       module_ids=[f"pub{i}"])
            duration = PUBLISH_S[self.quick]
            cpu = _CpuMeter(daemons, cluster)
            for i, p in enumerate(pubs):
                p.submit("publish_for", runtime=daemons[i % instances].runtime_str,
                         module_id=f"pub{i}", duration=duration, prefix=f"k{i}-")
            sent = sum(p.result(timeout=duration + 120)["sent"] for p in pubs)
            deadline = time.monotonic() + 60
            got: dict[str, Any] = {}
            while time.monotonic() < deadline:
                got = sink.call("sink_wait", wait_s=0.0)
                if got["count"] >= sent:
                    break
                time.sleep(0.2)  # quiet-period: polling the sink's count
            used = cpu.read()
            if got.get("count", 0) < sent or got.get("first") is None:
                raise BenchError(f"N1: {got.get('count')} of {sent} updates delivered")
            span = float(got["last"]) - float(got["first"])
            return RateRun(float(got["count"]) / max(1e-9, span), *used)
        finally:
            self._release(sink, *pubs)
            self._stop(*daemons)
            cluster.stop()

    def _throughput(self) -> Result:
        """N1 over :data:`N1_ROUNDS` rounds, each a 1-instance and a 2-instance run (in
        alternating order, so that a drift of the machine's load does not favour one): the
        medians of both series and their ratio; every run's rate, and the CPUs the machine,
        the daemons and the servers used meanwhile, in the notes."""
        ones: list[RateRun] = []
        twos: list[RateRun] = []
        for r in range(N1_ROUNDS[self.quick]):
            for instances in ((1, 2) if r % 2 == 0 else (2, 1)):
                self.progress(f"N1 round {r + 1}: delivered updates/s, {instances} "
                              f"instance{'s' if instances > 1 else ''}")
                (ones if instances == 1 else twos).append(self._delivered_rate(instances))
        ratios = sorted(round(t.rate / o.rate, 2) for t, o in zip(twos, ones, strict=True))

        def cpus(runs: list[RateRun]) -> str:
            return (f"machine {median([x.machine for x in runs]):.2f}, daemons "
                    f"{median([x.daemons for x in runs]):.2f}, servers "
                    f"{median([x.servers for x in runs]):.2f}")

        return row("N1 delivered updates/s, 2 NATS instances vs 1",
                   round(median([x.rate for x in twos])), "/s", ">= 1.5x",
                   baseline=round(median([x.rate for x in ones])),
                   notes=f"median of {len(ones)} rounds; the same 2 publishers and 1 "
                         f"subscriber, fresh keys; 1 instance "
                         f"{[round(x.rate) for x in ones]}, 2 instances "
                         f"{[round(x.rate) for x in twos]} /s; round ratios "
                         f"{ratios[0]}-{ratios[-1]}x; CPUs busy of {psutil.cpu_count()} "
                         f"(medians, from the first publish to the last delivery): "
                         f"1 instance {cpus(ones)}; 2 instances {cpus(twos)}")

    def _coordinate_p99(self, cluster: Any | None) -> float:
        d = self._daemon(cluster, "co")
        agent = self._agent()
        try:
            agent.call("register", runtime=d.runtime_str, module_ids=["m0", "m1"])
            got = agent.call("coordinate_loop", runtime=d.runtime_str,
                             n=self.plan.coord_n, context={"bench": "nats"}, timeout=300)
            if not got["samples"]:
                raise BenchError("N2: no cached coordination")
            return percentile(got["samples"], 99)
        finally:
            self._release(agent)
            self._stop(d)

    def _failover_once(self) -> tuple[float, int]:
        cluster = self._cluster()
        hybrid = {"debounce": {"delay_ms": 3000, "max_wait_ms": 6000}}
        victim = self._daemon(cluster, "fa", hybrid)
        other = self._daemon(cluster, "fb", hybrid)
        self._wait_split([victim, other])
        sink, pub = self._agent(), self._agent()
        try:
            sink.call("register", runtime=other.runtime_str, module_ids=["sink"],
                      subscribe=["pub"])
            sink.call("sink_arm", expected=FAILOVER_UPDATES, track_keys=True)
            pub.call("register", runtime=other.runtime_str, module_ids=["pub"])
            got = pub.call("publish_pipelined", runtime=other.runtime_str,
                           module_id="pub", n=FAILOVER_UPDATES, prefix="f")
            if got["errors"]:
                raise BenchError(f"N3: publishes refused: {got['errors']}")
            victim.wait_for(lambda s: s["engine"]["owner"]["fetched_updates"] > 0,
                            "the victim holds updates", timeout=30)
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            done = sink.call("sink_wait", wait_s=60.0, timeout=90)
            lost = max(0, FAILOVER_UPDATES - int(done["count"]))
            return (done["last"] or killed) - killed, lost
        finally:
            self._release(sink, pub)
            self._stop(victim, other)
            cluster.stop()

    def _sim_measure(self, hosts: list[Daemon], per_host: int, what: str
                     ) -> tuple[list[float], list[float]]:
        """N5/N6 on ``hosts`` (a daemon per simulated host; the local baseline passes the
        one daemon for every host): ``per_host`` modules per host on connections of
        their own, then per round the cached coordinate p99 on host 0 and the
        publish-to-delivery p99 from host 0 to the last host (seconds).

        Raises:
            BenchError: modules not registered, or updates not delivered, in time.
        """
        loaders = [self._agent() for _ in range(SIM_LOADERS[self.quick])]
        probe = self._agent()
        try:
            jobs: dict[int, list[tuple[str, list[str]]]] = {}
            for h, d in enumerate(hosts):
                ids = [f"m{h}-{i}" for i in range(per_host)]
                jobs.setdefault(h % len(loaders), []).append((d.runtime_str, ids))
            self.progress(f"{what}: {len(hosts) * per_host} module connections")
            for i, work in jobs.items():
                loaders[i].submit("register_many", work=work)
            for i in jobs:
                loaders[i].result(timeout=300)
            probe.call("register", runtime=hosts[0].runtime_str, module_ids=["probe-src"])
            probe.call("register", runtime=hosts[-1].runtime_str, module_ids=["probe-sink"],
                       subscribe=["probe-src"])
            expected: dict[str, int] = {}
            for h, d in enumerate(hosts):
                expected[d.runtime_str] = expected.get(d.runtime_str, 0) + per_host + \
                    (h == 0) + (h == len(hosts) - 1)
            for d in {d.runtime_str: d for d in hosts}.values():
                n = expected[d.runtime_str]

                def registered(st: dict[str, Any], n: int = n) -> bool:
                    return bool(st["modules"] == n)

                d.wait_for(registered, f"{n} modules on {d.name}", timeout=120)
            coord: list[float] = []
            delivery: list[float] = []
            for r in range(SIM_ROUNDS[self.quick]):
                self.progress(f"{what}: round {r + 1}")
                got = probe.call("coordinate_loop", runtime=hosts[0].runtime_str,
                                 n=self.plan.coord_n, context={"bench": "sim"}, timeout=300)
                if not got["samples"]:
                    raise BenchError(f"{what}: no cached coordination")
                coord.append(percentile(got["samples"], 99))
                lat = probe.call("priority_latency", runtime=hosts[0].runtime_str,
                                 source="probe-src", n=SIM_PUBLISH_N[self.quick],
                                 gap=SIM_GAP_S, prefix=f"{what}{r}", timeout=300)
                delivery.append(percentile(lat["medium"], 99))
            return coord, delivery
        finally:
            self._release(probe, *loaders)

    def _idle_cpu(self, daemons: list[Daemon], cluster: Any) -> tuple[float, float]:
        """The CPUs the idle ``daemons`` and the cluster's servers use (CPU seconds per
        second over :data:`SIM_IDLE_S`, before any module connects)."""
        servers = [psutil.Process(cluster.pid(i)) for i in cluster.running()]

        def used() -> tuple[float, float]:
            return (sum(d.cpu_seconds() for d in daemons),
                    sum(float(sum(p.cpu_times()[:2])) for p in servers))

        d0, s0 = used()
        time.sleep(SIM_IDLE_S)  # quiet-period: the idle cluster's CPU use is the figure
        d1, s1 = used()
        return (d1 - d0) / SIM_IDLE_S, (s1 - s0) / SIM_IDLE_S

    def _simulation(self) -> list[Result]:
        hosts, per_host = SIM_HOSTS[self.quick], SIM_MODULES[self.quick]
        cluster = self._cluster()
        self.progress(f"N5: starting {hosts} NATS daemons")
        daemons = [self._daemon(cluster, f"h{i}", SIM_MODE) for i in range(hosts)]
        try:
            self._wait_split(daemons, timeout=120, every=False)
            idle = self._idle_cpu(daemons, cluster)
            n_coord, n_dlv = self._sim_measure(daemons, per_host, "N5 nats")
        finally:
            self._stop(*daemons)
            cluster.stop()
        local = self._daemon(None, "sim-local", SIM_MODE)
        try:
            l_coord, l_dlv = self._sim_measure([local] * hosts, per_host, "N5 local")
        finally:
            self._stop(local)
        shape = f"{hosts} hosts x {per_host} modules"

        def ms(values: list[float]) -> list[float]:
            return [round(v * 1000, 1) for v in values]

        return [
            row(f"N5 simulated hosts ({shape}): cached coordinate p99, NATS vs local",
                us(median(n_coord)), "us", "<= 10.0x", baseline=us(median(l_coord)),
                notes=f"{hosts * per_host} module connections; round p99s ms: NATS "
                      f"{ms(n_coord)}, local {ms(l_coord)}; idle, before the modules: "
                      f"the {hosts} daemons use {idle[0]:.2f} CPUs, the 3 servers "
                      f"{idle[1]:.2f}"),
            row(f"N6 simulated hosts ({shape}): publish-to-delivery p99, NATS vs local",
                round(median(n_dlv) * 1000, 1), "ms", "<= 10.0x",
                baseline=round(median(l_dlv) * 1000, 1),
                notes=f"host 0 to host {hosts - 1}, debounce 20 ms, batch 10 ms; round "
                      f"p99s ms: NATS {ms(n_dlv)}, local {ms(l_dlv)}"),
        ]

    def run(self) -> list[Result]:
        rows: list[Result] = []
        if self.only and not (self.only <= {"5", "6"} or self.only == {"1"}):
            raise BenchError(f"--engine nats: --only takes 1 (N1), 5 (N5 and N6, the "
                             f"simulation) or nothing (every figure), not "
                             f"{','.join(sorted(self.only))}")
        if self.only and self.only != {"1"}:
            return self._simulation()
        rows.append(self._throughput())
        if self.only == {"1"}:
            return rows
        self.progress("N2: cached coordinate p99")
        cluster = self._cluster()
        nats_p99 = self._coordinate_p99(cluster)
        cluster.stop()
        local_p99 = self._coordinate_p99(None)
        rows.append(row("N2 cached coordinate p99, NATS engine vs local", us(nats_p99), "us",
                        "<= 10.0x", baseline=us(local_p99),
                        notes="the cache is a KV bucket; hits come from each daemon's "
                              "near cache (kept by a watch)"))
        times: list[float] = []
        lost = 0
        for i in range(max(1, self.plan.rounds // 4)):
            self.progress(f"N3: failover, run {i + 1}")
            t, n = self._failover_once()
            times.append(t)
            lost += n
        rows.append(row("N3 failover: SIGKILL of an owner to all its updates delivered",
                        round(median(times), 2), "s", "<= 15.0",
                        notes=f"runs {[round(t, 2) for t in times]}; includes the 9 s lease "
                              "and the 3 s debounce of the redelivered updates"))
        rows.append(row("N4 failover: accepted updates lost", float(lost), "updates",
                        "<= 0", notes=f"over {len(times)} runs of {FAILOVER_UPDATES}"))
        rows.extend(self._simulation())
        return rows
