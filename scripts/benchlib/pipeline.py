"""The figures of the update pipeline (publish, debounce, batch, deliver): the mixin
:class:`PipelineFigures` of :class:`~benchlib.figures.Bench` (which owns the daemons and the
agents and runs these with the others; ``figures.py`` lists every figure).

What each of them measures (``N`` and round counts are smaller with ``--quick``):

3. ``publish`` throughput from one module process: N publishes sent back to back (one
   ``sendall`` per request, as the client does), then every future awaited; N / elapsed,
   median of rounds; the keys cycle over 1,000 (a realistic, collapsing stream: with all
   keys distinct, 40,000 publishes inside one debounce delay overflow the packaged
   ``batch.max_queue`` and are refused, which is figure 4's business). Baseline: raw
   pipelined msgpack echo (one ``sendall`` per frame while a reader thread decodes the
   replies), median of rounds interleaved with figures 3 and 4.
4. updates delivered per second: N publishes with distinct keys from one process to a
   daemon in HYBRID whose config is the packaged one except ``debounce.delay_ms: 1``
   (``critical_delay_ms: 1``) so the figure is the pipeline's throughput rather than the
   debounce delay, and ``batch.max_queue: 1000000`` so nothing is refused; a subscriber
   process counts the updates it receives. N / (last delivery - first publish), on the
   system-wide monotonic clock. Baseline: the raw pipelined echo of figure 3.
6. delivery-stage throughput, batched vs unbatched: N updates (distinct keys, N a multiple
   of ``batch.max_size``) are made pending in the debouncer (``delay_ms`` 10 min), then
   the subscriber process calls ``debouncer.flush()`` and measures until it has received
   all N; updates/s = N / (last delivery - flush sent). Same workload on a daemon whose
   config only differs by ``batch.enabled: false``; rounds alternate. Ratio
   batched / unbatched.
7. publish-to-delivery latency of ``critical`` vs ``medium`` updates with HYBRID's
   configured values (the packaged config with ``adaptive.enabled: false``: the figure is
   what the critical path saves against the configured delay and window; what adapting
   saves is figure 16): one process publishes, alternately, a medium and a critical update on
   fresh keys every 20 ms and a subscriber module in the same process timestamps each
   arrival. Value: 1 - median(critical) / median(medium).
9. debounce timer lateness p99 (the monitor's ``debounce_lateness`` histogram, recent
   window trimmed before each phase) while one process publishes at full speed on
   distinct keys, vs while it publishes one update every 5 ms; packaged HYBRID config.
"""

from __future__ import annotations

import time
from typing import Any

from .agents import Agent
from .common import BenchError, Plan, Result, median, row
from .daemons import Daemon


class PipelineFigures:
    """Figures 3, 4, 6, 7 and 9, mixed into :class:`~benchlib.figures.Bench`, which sets
    the attributes declared here (and starts the daemons each figure is given)."""

    plan: Plan
    agents: list[Agent]
    echo_path: str
    _pipelined_echo: list[float]  # raw pipelined echo rates: figures 3 and 4 add rounds

    def fig_publish(self, d: Daemon) -> list[Result]:
        """Figure 3."""
        p = self.plan
        a = self.agents[0]
        a.call("register", runtime=d.runtime_str, module_ids=["pub-0"])
        # warm-up
        a.call("publish_pipelined", runtime=d.runtime_str, module_id="pub-0",
               n=p.pipelined_n // 5, prefix="warm", keys=1000)
        a.call("raw_echo_pipelined", path=self.echo_path, n=p.pipelined_n // 5)
        rates: list[float] = []
        errors: dict[str, int] = {}
        for r in range(p.rounds):
            self._pipelined_echo.append(
                a.call("raw_echo_pipelined", path=self.echo_path, n=p.pipelined_n))
            out = a.call("publish_pipelined", runtime=d.runtime_str, module_id="pub-0",
                         n=p.pipelined_n, prefix=f"p{r}-", keys=1000)
            rates.append(out["rate"])
            for k, v in out["errors"].items():
                errors[k] = errors.get(k, 0) + v
        a.call("release", runtime=d.runtime_str)
        rate, echo = median(rates), median(self._pipelined_echo)
        return [row("publish throughput, one process, pipelined", round(rate), "msg/s",
                    ">= 0.5x", round(echo),
                    f"rounds {[round(x) for x in rates]}; refused {errors or 0}; 1,000 keys; "
                    "baseline: raw pipelined msgpack echo")]

    def fig_priority(self, d: Daemon) -> list[Result]:
        """Figure 7: critical vs medium publish-to-delivery latency, HYBRID not adapting."""
        p = self.plan
        a = self.agents[0]
        runtime = d.runtime_str
        a.call("register", runtime=runtime, module_ids=["prio-src"])
        a.call("register", runtime=runtime, module_ids=["prio-sink"], subscribe=["prio-src"])
        a.call("priority_latency", runtime=runtime, source="prio-src", n=3, gap=0.02,
               prefix="warm")
        out = a.call("priority_latency", runtime=runtime, source="prio-src", n=p.priority_n,
                     gap=0.02, prefix="m")
        a.call("release", runtime=runtime)
        crit, norm = median(out["critical"]), median(out["medium"])
        value = 1.0 - crit / norm
        return [row("critical vs normal publish-to-delivery latency: less latency",
                    round(value, 4), "fraction", ">= 0.85", None,
                    f"median critical {crit * 1e3:.1f} ms, medium {norm * 1e3:.1f} ms "
                    f"({len(out['critical'])} each)")]

    def _lateness_phase(self, d: Daemon, agent: Agent, duration: float, prefix: str,
                        interval: float | None) -> tuple[dict[str, Any], float, int]:
        client = d.client()
        client.monitor.trim().get(timeout=30)
        cpu0, t0 = d.cpu_seconds(), time.monotonic()
        out = agent.call("publish_for", runtime=d.runtime_str, module_id="late-0",
                         duration=duration, prefix=prefix, interval=interval)
        cpu = (d.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        lat = client.monitor.latencies().get(timeout=30)["debounce_lateness"]["recent"]
        return lat, cpu, out["sent"]

    def fig_lateness(self, d: Daemon) -> list[Result]:
        """Figure 9: debounce lateness p99 at full publish load vs a light load."""
        p = self.plan
        a = self.agents[0]
        a.call("register", runtime=d.runtime_str, module_ids=["late-0"])
        idle, idle_cpu, _ = self._lateness_phase(d, a, p.lateness_s, "idle-", 0.005)
        busy, busy_cpu, busy_sent = self._lateness_phase(d, a, p.lateness_s, "busy-", None)
        a.call("release", runtime=d.runtime_str)
        if not idle["count"] or not busy["count"]:
            raise BenchError(f"no debounce timers fired (idle {idle['count']}, "
                             f"loaded {busy['count']})")
        value, base = busy["p99"], idle["p99"]
        return [row("debounce timer lateness p99 at full publish load", round(value, 3),
                    "ms", "<= 2 ms", round(base, 3),
                    f"loaded: {busy['count']} timers, {busy_sent} publishes, daemon CPU "
                    f"{busy_cpu:.0%}, max {busy['max']:.1f} ms; idle (one publish per 5 ms):"
                    f" {idle['count']} timers, daemon CPU {idle_cpu:.0%}")]

    def fig_delivered(self, d: Daemon) -> list[Result]:
        """Figure 4: updates delivered per second (delay_ms 1 config)."""
        p = self.plan
        pub, sub = self.agents[0], self.agents[1]
        runtime = d.runtime_str
        pub.call("register", runtime=runtime, module_ids=["pub-0"])
        sub.call("register", runtime=runtime, module_ids=["sub-0"], subscribe=["pub-0"])
        rates: list[float] = []
        batches = 0
        for r in range(p.rounds + 1):  # round 0 warms up
            n = p.delivered_n if r else p.delivered_n // 5
            if r:
                self._pipelined_echo.append(
                    pub.call("raw_echo_pipelined", path=self.echo_path, n=p.pipelined_n))
            sub.call("sink_arm", expected=n)
            out = pub.call("publish_pipelined", runtime=runtime, module_id="pub-0", n=n,
                           prefix=f"d{r}-")
            if out["errors"]:
                raise BenchError(f"publishes refused: {out['errors']}")
            got = sub.call("sink_wait", wait_s=120)
            if not got["complete"]:
                raise BenchError(f"{got['count']} of {n} updates delivered within 120 s")
            if r:
                rates.append(n / (got["last"] - out["start"]))
                batches += got["batches"]
        pub.call("release", runtime=runtime)
        sub.call("release", runtime=runtime)
        rate, echo = median(rates), median(self._pipelined_echo)
        return [row("updates delivered to a subscriber per second (HYBRID, distinct keys)",
                    round(rate), "updates/s", ">= 0.3x", round(echo),
                    f"rounds {[round(x) for x in rates]}; mean batch "
                    f"{p.delivered_n * p.rounds / max(1, batches):.1f} updates; "
                    "config: debounce.delay_ms 1")]

    def _flush_round(self, d: Daemon, pub: Agent, sub: Agent, n: int, tag: str
                     ) -> dict[str, Any]:
        out = pub.call("publish_pipelined", runtime=d.runtime_str, module_id="fpub", n=n,
                       prefix=f"{tag}-")
        if out["errors"]:
            raise BenchError(f"publishes refused: {out['errors']}")
        d.wait_for(lambda s: s["debouncer"]["pending"] >= n, f"{n} keys pending")
        cpu0 = d.run_seconds()
        got: dict[str, Any] = sub.call("flush_and_wait", runtime=d.runtime_str, expected=n,
                                       wait_s=120)
        got["daemon_cpu_s"] = d.run_seconds() - cpu0
        return got

    def fig_batching(self, batched: Daemon, unbatched: Daemon) -> list[Result]:
        """Figure 6: delivery-stage throughput with and without batching."""
        p = self.plan
        pairs = {"b": (batched, self.agents[0], self.agents[1]),
                 "u": (unbatched, self.agents[2], self.agents[3])}
        for d, pub, sub in pairs.values():
            pub.call("register", runtime=d.runtime_str, module_ids=["fpub"])
            sub.call("register", runtime=d.runtime_str, module_ids=["fsub"],
                     subscribe=["fpub"])
            self._flush_round(d, pub, sub, 500, "warm")
        rates: dict[str, list[float]] = {"b": [], "u": []}
        cpu_us: dict[str, list[float]] = {"b": [], "u": []}  # daemon CPU per update
        sub_us: dict[str, list[float]] = {"b": [], "u": []}  # subscriber CPU per update
        batches: dict[str, int] = {"b": 0, "u": 0}
        for r in range(p.rounds):
            order = ("b", "u") if r % 2 == 0 else ("u", "b")
            for key in order:
                d, pub, sub = pairs[key]
                got = self._flush_round(d, pub, sub, p.flush_n, f"{key}{r}")
                rates[key].append(p.flush_n / got["elapsed"])
                cpu_us[key].append(got["daemon_cpu_s"] / p.flush_n * 1e6)
                sub_us[key].append(got["subscriber_cpu_s"] / p.flush_n * 1e6)
                batches[key] += got["batches"]
        for d, pub, sub in pairs.values():
            pub.call("release", runtime=d.runtime_str)
            sub.call("release", runtime=d.runtime_str)
        b, u = median(rates["b"]), median(rates["u"])
        per = p.flush_n * p.rounds
        return [row("batched vs unbatched delivery throughput (flush of pending updates)",
                    round(b), "updates/s", ">= 10x", round(u),
                    f"updates per delivery: batched {per / max(1, batches['b']):.1f}, "
                    f"unbatched {per / max(1, batches['u']):.1f}; daemon CPU per update "
                    f"(median of rounds, schedstat) batched {median(cpu_us['b']):.2f} µs, "
                    f"unbatched {median(cpu_us['u']):.2f} µs; subscriber process CPU per "
                    f"update batched {median(sub_us['b']):.2f} µs, unbatched "
                    f"{median(sub_us['u']):.2f} µs; rounds b "
                    f"{[round(x) for x in rates['b']]} u {[round(x) for x in rates['u']]}")]
