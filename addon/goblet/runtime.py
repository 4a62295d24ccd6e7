"""Everything goblet runs, built once at start-up from the settings.

The addon's hooks reach every part through one Runtime, so the hooks stay
glue and the parts stay testable on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from goblet.auth.credentials import TenantKeyer
from goblet.auth.secret import load_or_create_secret
from goblet.auth.verdicts import VerdictCache
from goblet.cache.evict import Eviction, Evictor
from goblet.cache.fill import Filler
from goblet.cache.lifecycle import Lifecycle
from goblet.cache.locks import RepoLocks
from goblet.cache.maintenance import Maintainer, Policy
from goblet.cache.partitions import PartitionLimiter
from goblet.cache.store import CacheRepo, RepoStore
from goblet.cache.usage import measure
from goblet.cache.warm import Warmer
from goblet.decide import FetchDecider
from goblet.fleet import tier as fleet_tier
from goblet.git.runner import GitRunner
from goblet.lfs.store import LfsStore
from goblet.observe.access import AccessLog
from goblet.observe.endpoints import Answer, EndpointServer, answer
from goblet.observe.fills import FillReporter
from goblet.observe.health import HealthChecker, Readiness
from goblet.observe.metrics import CONTENT_TYPE, Metrics
from goblet.observe.recorder import RequestRecorder
from goblet.observe.webhooks import Webhooks
from goblet.offline.ask import UpstreamAsker
from goblet.offline.forward import Forwarder, tls_context
from goblet.offline.state import UpstreamState
from goblet.options import Settings
from goblet.policy.answers import AnswerPolicy
from goblet.policy.gate import FlowPolicy
from goblet.policy.lfs import LfsPolicy
from goblet.policy.offload import INLINE_REQUEST_BYTES, favour_the_event_loop
from goblet.policy.refcache import RefsFromCache
from goblet.protocol.request import cache_identity
from goblet.serve.backend import ServeBackend
from goblet.serve.packcache import PackCache, cache_key, tags_digest
from goblet.serve.plans import PlanRegistry, ServePlan
from goblet.serve.refanswers import RefAnswers

log = logging.getLogger("goblet")

SECRET_FILE = "tenant-secret"  # noqa: S105 (a file name, not a secret)
USAGE_EVERY = 60.0
READY_EVERY = 15.0
MAX_TAG_DIGESTS = 64  # tag sets whose pack-cache digest is remembered
# (the decider hands out the same set object for the same question: a hit costs nothing)
_tags_digest = functools.lru_cache(maxsize=MAX_TAG_DIGESTS)(tags_digest)


class Runtime:
    """The started parts: store, fills, decisions, backend, telemetry."""

    def __init__(self, settings: Settings, git: GitRunner, secret: bytes, metrics: Metrics,
                 access: AccessLog, *, forwarder: Forwarder | None = None) -> None:
        self.settings = settings
        self.forwarder = forwarder
        self.upstream = UpstreamState()
        self.asker = UpstreamAsker(forwarder, self.upstream) if forwarder is not None else None
        self.git = git
        self.metrics = metrics
        self.access = access
        self.store = RepoStore(settings.cache_dir, git)
        self.keyer = TenantKeyer(secret)
        self.plans = PlanRegistry()
        self.packcache = PackCache(self.store.packcache_dir, settings.pack_cache_max_bytes)
        self.backend = ServeBackend(git, self.plans, self.packcache,
                                    follow_timeout=float(settings.upstream_timeout),
                                    views_dir=self.store.tmp_dir)
        locks = RepoLocks(self.store.lock_dir)
        self.lfs_store = LfsStore(settings.cache_dir)
        reporter = self.reporter = FillReporter(metrics, access, settings.instance)
        filler = Filler(self.store, locks, git, stall_timeout=settings.upstream_timeout,
                        observer=reporter)
        self.fleet = filler.fleet = fleet_tier.build(settings, self.store, locks, metrics)
        self.evictor = Evictor(
            self.store, locks, max_bytes=settings.cache_max_bytes,
            min_free_bytes=settings.min_free_bytes, reading=self.backend.reading,
            on_evict=self._evicted, lfs=self.lfs_store,
        )
        self.maintainer = Maintainer(
            self.store, locks, git,
            Policy(full_every=settings.full_repack_interval, threads=settings.repack_threads),
            on_done=lambda kind, result, s: metrics.repacks.labels(kind, result).inc(),
        )
        self.lifecycle = Lifecycle(self.store, locks, git, self.evictor, self.maintainer,
                                   maintenance=settings.maintenance)
        reporter.on_filled.append(self.lifecycle.after_fill)
        self.partitions = PartitionLimiter(self.store, self.evictor, settings.max_partitions,
                                           on_evict=metrics.partition_evictions.inc,
                                           on_refuse=metrics.partition_refusals.inc)
        reporter.on_filled.append(self.partitions.after_fill)
        self.warmer = Warmer(filler, self.store, settings.warm_repos, settings.warm_credentials,
                             settings.warm_interval, anonymous=settings.isolation == "public")
        verdicts = VerdictCache(
            settings.verdict_ttl, negative_ttl=settings.negative_ttl,
            keep=settings.offline_grace if settings.offline else 0,
        )
        self.decider = FetchDecider(
            self.store, filler, verdicts, isolation=settings.isolation,
            offline=settings.offline, offline_grace=settings.offline_grace,
            upstream=self.upstream, asker=self.asker, admit=self.partitions.admit,
            tee=settings.cold_clones == "stream",
        )
        self.health = HealthChecker(
            cache_dir=settings.cache_dir, tmp_dir=self.store.tmp_dir, git=git,
            min_free_bytes=settings.min_free_bytes, backend_up=lambda: self.backend.running,
        )
        # Decoding compressed bodies is CPU work: two threads, so at most two bodies
        # of goblet_max_request_bytes are being decoded at once.
        self.inspector = ThreadPoolExecutor(max_workers=2, thread_name_prefix="goblet-inspect")
        self.answers = AnswerPolicy(self.decider, self.store, self.inspector)
        self.refs = RefsFromCache(self.decider, self.serve_plan, metrics,
                                  lambda: self.settings.refs_ttl, answers=RefAnswers(git))
        self.webhooks = Webhooks(lambda: self.settings.webhook_secret_file,
                                 self.refs.mark_stale, metrics, lambda: self.settings.hosts)
        self.policy = FlowPolicy(lambda: self.settings, keyer=self.keyer, store=self.store,
                                 decider=self.decider, asker=self.asker, metrics=metrics,
                                 inspector=self.inspector, planner=self.serve_plan,
                                 endpoints=self.endpoint_answer, refs=self.refs)
        self.recorder = RequestRecorder(metrics, access)
        self.lfs = LfsPolicy(lambda: self.settings, self.lfs_store, metrics,
                             denied_at=self._denied_at, inspector=self.inspector)
        self.endpoints: EndpointServer | None = None
        self.metrics_host = ""  # where the endpoints' own port listens ("": everywhere)
        self._tasks: list[asyncio.Task[None]] = []
        metrics.track_verdicts(lambda: len(self.decider.verdicts))
        metrics.pack_cache_bytes.set_function(lambda: float(self.packcache.stored_bytes))

    def reconfigure(self, settings: Settings) -> None:
        """Apply changed settings to the running parts.

        Every option applies here except those declared ``restart`` in
        ``options.OPTIONS`` (the addon refuses to change those at run time).
        Settings are read from here on; nothing keeps an older copy.
        """
        s = self.settings = settings
        verdicts = self.decider.verdicts
        verdicts.ttl, verdicts.negative_ttl = s.verdict_ttl, s.negative_ttl
        verdicts.keep = s.offline_grace if s.offline else 0
        self.decider.isolation, self.decider.offline = s.isolation, s.offline
        self.decider.offline_grace = s.offline_grace
        self.decider.tee = s.cold_clones == "stream"
        self.decider.filler.stall_timeout = s.upstream_timeout
        if self.forwarder is not None:
            self.forwarder.timeout = s.upstream_timeout
        self.evictor.max_bytes, self.evictor.min_free_bytes = s.cache_max_bytes, s.min_free_bytes
        self.health.min_free_bytes = s.min_free_bytes
        self.packcache.set_budget(s.pack_cache_max_bytes)
        self.backend.follow_timeout = float(s.upstream_timeout)
        self.maintainer.policy = replace(self.maintainer.policy, full_every=s.full_repack_interval,
                                         threads=s.repack_threads)
        self.lifecycle.maintenance = s.maintenance
        if self.fleet is not None:
            self.fleet.max_bytes, self.fleet.partitions = s.store_max_bytes, s.store_partitions
            self.fleet.stall_timeout = s.upstream_timeout
            self.fleet.public = s.isolation == "public"
            self.fleet.cache_max_bytes, self.fleet.min_free_bytes = (s.cache_max_bytes,
                                                                     s.min_free_bytes)
        self.partitions.max_per_repo = s.max_partitions
        self.reporter.instance = s.instance
        self.warmer.urls_file, self.warmer.credentials_file = s.warm_repos, s.warm_credentials
        self.warmer.interval, self.warmer.anonymous = s.warm_interval, s.isolation == "public"
        self.lifecycle.check_budget()

    def _denied_at(self, tenant: str, repo_url: str) -> float | None:
        """When the upstream last refused (tenant, repo), if that is its latest answer."""
        verdict = self.decider.verdicts.denied_within(tenant, repo_url, float("inf"))
        return verdict.at if verdict is not None else None

    def _evicted(self, eviction: Eviction) -> None:
        self.metrics.evictions.inc()
        self.access.event(
            "evict", f"evicted {eviction.url or eviction.key[:12]} ({eviction.bytes} bytes, "
            f"idle {eviction.idle_seconds:.0f}s)", url=eviction.url, bytes=eviction.bytes,
            instance=self.settings.instance)

    @classmethod
    async def start_for(cls, settings: Settings, o: Any, access: AccessLog) -> Runtime:
        """``start`` with what it needs from mitmproxy's options ``o``: the upstream CA
        (``ssl_verify_upstream_trusted_ca``), ``ssl_insecure`` and ``listen_host``."""
        return await cls.start(
            settings, settings.metrics_host or getattr(o, "listen_host", ""), access,
            ca_file=getattr(o, "ssl_verify_upstream_trusted_ca", None),
            insecure=bool(getattr(o, "ssl_insecure", False)))

    @classmethod
    async def start(cls, settings: Settings, metrics_host: str, access: AccessLog, *,
                    ca_file: str | None = None, insecure: bool = False) -> Runtime:
        """Create the cache layout, load the secret, start backend and endpoints.

        Raises OSError or ValueError when the cache dir cannot be used.
        """
        favour_the_event_loop()
        base_config = resolve_ca(ca_file) + ([("http.sslVerify", "false")] if insecure else [])
        git = GitRunner(home=settings.cache_dir / "home", base_config=base_config)
        RepoStore(settings.cache_dir, git).prepare()
        secret = load_or_create_secret(settings.cache_dir / SECRET_FILE)
        forwarder = Forwarder(tls_context(ca_file, insecure), settings.upstream_timeout)
        rt = cls(settings, git, secret, Metrics(), access, forwarder=forwarder)
        rt.lfs_store.prepare()
        await rt.lifecycle.recover()
        await rt.partitions.load()
        await asyncio.to_thread(rt.packcache.load)
        await rt.backend.start()
        if rt.fleet is not None:
            log.info(fleet_tier.describe(settings))
        rt.metrics_host = metrics_host
        if settings.metrics_port:
            rt.endpoints = EndpointServer(rt.endpoint_answer, hooks=rt.webhooks.answer,
                                          wants=rt.webhooks.wants, screen=rt.webhooks.screen)
            await rt.endpoints.start(metrics_host, settings.metrics_port)
        loop = asyncio.get_running_loop()
        rt._tasks = [loop.create_task(rt._measure_usage()), loop.create_task(rt._watch_ready()),
                     loop.create_task(rt.lifecycle.run()), loop.create_task(rt.warmer.run())]
        return rt

    async def stop(self) -> None:
        """Stop background work, the endpoints and the backend (killing its children)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.endpoints is not None:
            await self.endpoints.stop()
        if self.forwarder is not None:
            self.forwarder.close()
        if self.fleet is not None:
            await self.fleet.close()
        await self.backend.stop()
        self.inspector.shutdown(wait=False, cancel_futures=True)

    async def readiness(self) -> Readiness:
        """Evaluate readiness now (and publish it as ``goblet_ready``)."""
        verdict = await self.health.readiness()
        self.metrics.ready.set(1 if verdict.ready else 0)
        return verdict

    async def _watch_ready(self) -> None:
        while True:
            verdict = await self.readiness()
            self.metrics.cache_free_bytes.set(verdict.free_bytes)
            await asyncio.sleep(READY_EVERY)

    async def endpoint_answer(self, path: str) -> Answer:
        """The answer to a GET of one of the observability endpoints."""
        return await answer(
            path,
            metrics=lambda: (self.metrics.render(), CONTENT_TYPE),
            readiness=self.readiness,
        )

    async def _measure_usage(self) -> None:
        while True:
            usage = await asyncio.to_thread(measure, self.settings.cache_dir)
            self.metrics.cache_repos.set(usage.repos)
            self.metrics.cache_bytes.set(usage.bytes)
            await asyncio.sleep(USAGE_EVERY)

    def ready_line(self) -> str:
        """The one ``goblet ready`` line logged when start-up is complete."""
        s, metrics_host = self.settings, self.metrics_host
        hosts = ",".join(sorted(h if p == 443 else f"{h}:{p}" for h, p in s.hosts))
        metrics = f"{metrics_host or '*'}:{self.endpoints.port}" if self.endpoints else "-"
        offline = f"on(grace={s.offline_grace}s)" if s.offline else "off"
        return (f"goblet ready: instance={s.instance} cache_dir={s.cache_dir} hosts={hosts} "
                f"verdict_ttl={s.verdict_ttl}s upstream_timeout={s.upstream_timeout}s "
                f"isolation={s.isolation} offline={offline} "
                f"backend=127.0.0.1:{self.backend.port} metrics={metrics} "
                f"log_format={s.log_format}")

    def serve_plan(self, repo: CacheRepo, body: bytes, git_protocol: str | None, *,
                   notice: str | None = None, final: bool = False, advertise: bool = False,
                   prefix: bytes = b"", hidden_refs: tuple[str, ...] = (),
                   drop_head_symref: bool = False,
                   tags: frozenset[tuple[str, str]] | None = None,
                   untagged: bytes | None = None,
                   identity: bytes | None = None) -> ServePlan:
        """What the backend runs to answer ``body`` from ``repo`` (with ``tags``: in a view
        of it whose only refs are those tags; shared through the pack cache only with
        requests following the same tags).

        A ``final`` fetch (with ``done``) may be shared through the pack cache: its key
        names the repo, its refs and the request (``identity``: the body's
        ``cache_identity``, made off the loop; without it only a small body gets a key).
        A notice is added as the answer is sent; the stored answer never holds one.
        """
        key = None
        if final and identity is None and len(body) <= INLINE_REQUEST_BYTES:
            identity = cache_identity(body)  # (a larger body's was made off the loop)
        if final:
            snapshot = self.store.state(repo)
            if snapshot is not None and identity is not None:
                key = cache_key(repo.key, snapshot.digest, git_protocol, identity,
                                _tags_digest(tags) if tags is not None else None)
        return ServePlan(repo_dir=repo.path, body=body, git_protocol=git_protocol,
                         label=repo.url, advertise=advertise, prefix=prefix, notice=notice,
                         hidden_refs=hidden_refs, drop_head_symref=drop_head_symref,
                         cache_key=key, repo_key=repo.key, tags=tags,
                         untagged=untagged if tags is not None else None)


def resolve_ca(path: str | None) -> list[tuple[str, str]]:
    """git config for the upstream CA mitmproxy was told to trust, if any."""
    return [("http.sslCAInfo", str(Path(path).resolve()))] if path else []
