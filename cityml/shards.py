"""Which serving shard holds a city: the one routing rule, for the servers and the proxy in front of them.

Past what one process holds (2,000 models in a few GB), ``R`` serving replicas each load the champions of
their share of the cities, plus the global fallbacks. A city belongs to the shard that owns the first point
at or after ``sha1(city)`` on a ring of ``R × VNODES`` points (``sha1("shard-<i>#<v>")``, the first 8 bytes
as an unsigned integer, wrapping at the end). Adding a shard moves about ``1/(R+1)`` of the cities, all of
them to the new shard; no other city changes hands.

The servers read it through ``CITYML_SERVE_SHARDS`` / ``CITYML_SERVE_SHARD``; the proxy through the nginx
upstreams and ``map`` :func:`nginx_routes` writes from the catalog (``cityml serve-routes``), keyed by the
``X-City`` header the client sets (a request holds one city's trips).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Iterable

#: Points per shard on the ring (as nginx's ketama): shards' shares of 10,000 cities within 17% of equal, up to
#: 16 shards.
VNODES = 160
UPSTREAM = "cityml_shard_"


def _point(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")


@functools.lru_cache(maxsize=8)
def _ring(shards: int) -> tuple[list[int], list[int]]:
    points = sorted((_point(f"shard-{i}#{v}"), i) for i in range(shards) for v in range(VNODES))
    return [p for p, _ in points], [i for _, i in points]


def shard_of(city: str, shards: int) -> int:
    """The shard (0 .. shards-1) that serves ``city``."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, not {shards}")
    if shards == 1:
        return 0
    hashes, owners = _ring(shards)
    return owners[bisect.bisect_left(hashes, _point(city)) % len(hashes)]


#: Words nginx's ``map`` reads as its own parameters, not as a source value.
_MAP_WORDS = frozenset({"default", "hostnames", "include", "volatile"})


def _map_key(city: str) -> str:
    """A city as a ``map`` source value: a city named like one of map's own words is escaped with ``\\``
    (only those: nginx's parser reads ``\\t``, ``\\n`` and ``\\r`` as characters in any token)."""
    return f"\\{city}" if city in _MAP_WORDS else city


def nginx_routes(cities: Iterable[str], shards: int, server: str = "api-{shard}:8000", resolve: bool = False) -> str:
    """The proxy's half of the rule, for nginx's ``http {}`` block: an upstream per shard (``cityml_shard_<i>``,
    at ``server`` with the shard's number) and a ``map`` from the ``X-City`` header to the upstream holding that
    city (``$cityml_shard``; docker/nginx-shards.conf proxies to it).

    ``resolve`` (nginx 1.27.3 and later, with a ``resolver``): look the servers' names up again as they change
    (a restarted replica's new address), rather than once when nginx loads the file. A city missing from the
    map (added to the catalog since) goes to shard 0, which answers 421 naming the shard that holds it:
    regenerate the file and reload nginx when the catalog changes.
    """
    if "{shard}" not in server:
        raise ValueError(f"server: {server!r} must contain {{shard}}")
    lines = [f"# cityml serve-routes --shards {shards}: X-City -> the shard holding that city (cityml/shards.py)."]
    for i in range(shards):
        lines += [f"upstream {UPSTREAM}{i} {{"]
        if resolve:
            lines += [f"    zone {UPSTREAM}{i} 64k;", f"    server {server.format(shard=i)} resolve;"]
        else:
            lines += [f"    server {server.format(shard=i)};"]
        lines += ["    keepalive 16;", "}"]
    lines += [
        "map_hash_max_size 65536;",
        "map_hash_bucket_size 128;",
        "map $http_x_city $cityml_shard {",
        f"    default {UPSTREAM}0;",
        *(f"    {_map_key(city)} {UPSTREAM}{shard_of(city, shards)};" for city in cities),
        "}",
    ]
    return "\n".join(lines) + "\n"
