"""Sharded indexes on a Ray cluster: one ordinary :class:`~mrlsearch.Searcher` per shard.

:class:`ShardedSearcher` splits a corpus into ``n_shards`` ordinary index directories (each one
opens with ``Searcher.load``), serves each shard from one Ray actor, fans every query out to all
shards and merges their top-k into the global top-k. Writes are routed by id.

* **Assignment.** Vector ``id`` lives on shard ``shard_of(id, n_shards)``: the splitmix64
  finaliser of the id as an unsigned 64-bit integer, modulo ``n_shards``. It depends on nothing
  but the id and the shard count, so every process computes the same answer; an update (``add``
  of an id that exists) lands on the shard that holds the old vector.
* **Merge.** Each shard answers with its own top-k and the scores of the last stage; the merge
  keeps the k best of the ``n_shards * k`` candidates, ties broken by the smaller id. For
  ``exact`` this equals an exact search over the union; for the funnel every shard runs the same
  plan over a smaller index, so recall is at least the single-node recall at that plan.
* **Faults.** The driver supervises the actors. A call that finds its actor dead starts a new
  one from the shard's directory, replays the writes made since the last ``save`` (the driver
  keeps them), and retries; it waits at most ``restart_timeout`` seconds for the shard to come
  back and otherwise raises :class:`ShardUnavailableError` naming the shard. With
  ``allow_partial=True`` a query does not wait: shards that are down are left out and the
  result lists them in ``shards_missing``.

Ray is an optional dependency (``pip install 'mrlsearch[distributed]'``); ``import mrlsearch``
never imports it, this module does.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "mrlsearch.distributed needs Ray, which is not installed: "
        "pip install 'mrlsearch[distributed]'"
    ) from exc

from ._calls import ShardUnavailableError
from ._layout import shard_of
from ._merge import ShardedSearchResult
from ._searcher import ShardedSearcher

__all__ = ["ShardUnavailableError", "ShardedSearchResult", "ShardedSearcher", "shard_of"]
