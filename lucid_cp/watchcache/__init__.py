"""One reflector for every system's index: list + watch + compaction + backoff over a store
prefix, a typed cache, a bounded history ring, keyed fan-out to subscriptions and read-your-writes
waiting. Build an index by giving a :class:`Reflector` a :class:`Handler` for its prefix."""

from lucid_cp.watchcache.fanout import ALL_GROUPS
from lucid_cp.watchcache.handler import Handler, MessageHandler
from lucid_cp.watchcache.history import Change, ChangeType
from lucid_cp.watchcache.reflector import Backoff, Reflector
from lucid_cp.watchcache.subscription import Subscription

__all__ = [
    "ALL_GROUPS",
    "Backoff",
    "Change",
    "ChangeType",
    "Handler",
    "MessageHandler",
    "Reflector",
    "Subscription",
]
