"""Where the host's shared store lives, how ``[cache] size`` is split, and which store each process opens.

Rules kept here:
- ``[cache] size`` bounds everything the cache holds on the host: the shared store gets ``size`` minus the hot
  tiers (``hot_size`` in each worker; by default 5% of ``size`` split among the workers).
- The store's directory is ``[cache] path``; by default ``$RUNTIME_DIRECTORY/cache`` under systemd (a tmpfs that
  ``RuntimeDirectoryPreserve=restart`` keeps across restarts), else a directory per listening address under
  ``/dev/shm`` (tmpfs), so two instances on one host never share a store by accident. A path on a local disk makes
  a cache bigger than memory: the page cache keeps the hot pages.
- Whatever the path, the store's directory is ours alone (privatedir.py), and by default so is
  ``/dev/shm/edgeproxy-UID``: ``/dev/shm`` is world-writable, so another user may have made it first.
- The process that owns the store (the supervisor, or the only process with ``workers = 1``) opens it first and
  checks it (format, leftovers of a crash); workers open what it made.
"""

from __future__ import annotations

import os
import tempfile

from edgeproxy.cache.store import Store
from edgeproxy.config import Config
from edgeproxy.shared.store import SharedStore
from edgeproxy.shared.tiered import TieredStore

HOT_SHARE = 0.05


def store_dirs(config: Config) -> tuple[str, str]:
    """The highest directory that must be ours (shared/store.py checks it and everything below), and the store's."""
    if config.cache.path:
        return config.cache.path, config.cache.path
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        path = os.path.join(runtime.split(":")[0], "cache")
        return path, path
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    host, port = (config.server.listen or config.server.tls_listen)[0]
    place = f"{host.strip('[]').replace(':', '_')}-{port}"
    top = os.path.join(base, f"edgeproxy-{os.getuid()}")  # in a world-writable directory: anyone may make it first
    return top, os.path.join(top, place)


def hot_capacity(config: Config) -> int:
    """Each worker's hot tier, in bytes."""
    c = config.cache
    if c.hot_size is not None:
        return c.hot_size
    return int(c.size * HOT_SHARE) // config.server.workers


def shared_capacity(config: Config) -> int:
    return config.cache.size - hot_capacity(config) * config.server.workers


def open_owned(config: Config) -> SharedStore:
    """The store as its owner opens it (creating, checking or recreating it)."""
    c = config.cache
    top, path = store_dirs(config)
    return SharedStore(path, shared_capacity(config), c.max_object_size, c.max_variants, owner=True, top=top)


def worker_store(config: Config, shared: SharedStore | None = None) -> TieredStore:
    """A serving process's store: its hot tier over the shared store (opened here unless given)."""
    c = config.cache
    if shared is None:
        top, path = store_dirs(config)
        shared = SharedStore(path, max_object_size=c.max_object_size, max_variants=c.max_variants, owner=False,
                             top=top)
    return TieredStore(shared, hot_capacity(config), c.max_object_size, c.max_variants)


def memory_store(config: Config, shards: int = 1) -> Store:
    """The in-process store of a worker that shares nothing: an equal share of ``size``."""
    c = config.cache
    size = c.size if shards <= 1 else max(c.size // shards, c.max_object_size)
    return Store(size, c.max_object_size, c.max_variants)
