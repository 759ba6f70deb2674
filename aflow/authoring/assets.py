"""Assets: data named by a URI that tasks update (`outlets`) and DAGs wait for
(`schedule=[asset, ...]`, or a condition built with `&` and `|`), and AssetWatchers that
let a trigger from `triggers/` (a file landing, a SQL condition, a webhook) record asset
events with no task polling.

    raw = Asset("file:///data/landing/raw.csv")
    report = Asset("s3://reports/daily")
    schedule = raw & (report | Asset("db://warehouse/sales"))

An Asset is equal to (and hashes like) any other Asset of the same URI; `name` and
`extra` describe it and do not change its identity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from aflow.exceptions import DagDefinitionError
from aflow.store.records import AssetEventRecord

__all__ = [
    "Asset",
    "AssetAll",
    "AssetAny",
    "AssetEvent",
    "AssetWatcher",
    "BaseAsset",
    "OutletEventAccessors",
    "condition_from_json",
]

MAX_URI_LENGTH = 1500
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
_WATCHER_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")


def validate_uri(uri: object) -> str:
    """The URI, or DagDefinitionError saying what is wrong with it."""
    if not isinstance(uri, str):
        raise DagDefinitionError(f"Asset URI must be a string, not {type(uri).__name__} {uri!r}")
    if not uri:
        raise DagDefinitionError("Asset URI must not be empty")
    if len(uri) > MAX_URI_LENGTH:
        raise DagDefinitionError(f"Asset URI is longer than {MAX_URI_LENGTH} characters: {uri[:60]!r}...")
    if _BAD_CHARS.search(uri):
        raise DagDefinitionError(f"invalid Asset URI {uri!r}: whitespace or control characters")
    if "://" in uri:
        scheme, _, rest = uri.partition("://")
        if not _SCHEME.match(scheme):
            raise DagDefinitionError(
                f"invalid Asset URI {uri!r}: scheme {scheme!r} must start with a letter and "
                "hold only letters, digits, '+', '-' or '.'"
            )
        if not rest:
            raise DagDefinitionError(f"invalid Asset URI {uri!r}: nothing after '{scheme}://'")
    return uri


class BaseAsset:
    """An asset or a condition over assets. `a & b` needs both, `a | b` either."""

    def __and__(self, other: BaseAsset) -> AssetAll:
        _check_operand(other, "&")
        return AssetAll(self, other)

    def __or__(self, other: BaseAsset) -> AssetAny:
        _check_operand(other, "|")
        return AssetAny(self, other)

    def iter_assets(self) -> Iterator[Asset]:
        raise NotImplementedError

    def uris(self) -> set[str]:
        return {a.uri for a in self.iter_assets()}

    def evaluate(self, updated: set[str]) -> bool:
        """Whether the condition holds when the assets of `updated` URIs have events."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


def _check_operand(other: object, op: str) -> None:
    if not isinstance(other, BaseAsset):
        raise DagDefinitionError(
            f"cannot combine an asset with {type(other).__name__} {other!r} using {op!r}"
        )


class AssetWatcher:
    """Attaches `trigger` (a triggers.BaseTrigger) to an Asset: the triggerer runs it, and
    every event it yields is recorded as an event of the asset (its payload as `extra`);
    then the watcher waits for the next one (see the README for each trigger's edges)."""

    def __init__(self, name: str, trigger: Any) -> None:
        if not isinstance(name, str) or not _WATCHER_NAME.match(name):
            raise DagDefinitionError(
                f"invalid AssetWatcher name {name!r}: use 1-250 letters, digits, '_', '-' or '.'"
            )
        from triggers.base import BaseTrigger, check_kwargs

        if not isinstance(trigger, BaseTrigger):
            raise DagDefinitionError(
                f"AssetWatcher {name!r}: trigger must be a triggers BaseTrigger, "
                f"not {type(trigger).__name__}"
            )
        classpath, kwargs = trigger.serialize()
        try:
            check_kwargs(classpath, kwargs)
        except ValueError as exc:
            raise DagDefinitionError(f"AssetWatcher {name!r}: {exc}") from None
        self.name = name
        self.trigger = trigger
        self.classpath = classpath
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"AssetWatcher({self.name!r}, {self.classpath})"


class Asset(BaseAsset):
    """Data named by `uri` (e.g. "s3://bucket/key", "file:///data/x.csv", or a plain name)."""

    def __init__(
        self,
        uri: str,
        *,
        name: str | None = None,
        extra: dict[str, Any] | None = None,
        watchers: Iterable[AssetWatcher] | None = None,
    ) -> None:
        self.uri = validate_uri(uri)
        self.name = name or uri
        if extra is not None and not isinstance(extra, dict):
            raise DagDefinitionError(f"Asset {uri!r}: extra must be a dict, not {extra!r}")
        self.extra = dict(extra or {})
        self.watchers = list(watchers or ())
        names: set[str] = set()
        for watcher in self.watchers:
            if not isinstance(watcher, AssetWatcher):
                raise DagDefinitionError(
                    f"Asset {uri!r}: watchers must be AssetWatcher objects, not {watcher!r}"
                )
            if watcher.name in names:
                raise DagDefinitionError(f"Asset {uri!r}: two watchers are named {watcher.name!r}")
            names.add(watcher.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Asset) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(("aflow.Asset", self.uri))

    def __repr__(self) -> str:
        return f"Asset({self.uri!r})"

    def iter_assets(self) -> Iterator[Asset]:
        yield self

    def evaluate(self, updated: set[str]) -> bool:
        return self.uri in updated

    def to_json(self) -> dict[str, Any]:
        return {"asset": self.uri}


class _AssetBoolean(BaseAsset):
    kind = ""
    joiner = ""

    def __init__(self, *objects: BaseAsset) -> None:
        if not objects:
            raise DagDefinitionError(f"{type(self).__name__} needs at least one asset")
        for obj in objects:
            _check_operand(obj, self.joiner)
        self.objects = list(objects)

    def iter_assets(self) -> Iterator[Asset]:
        for obj in self.objects:
            yield from obj.iter_assets()

    def to_json(self) -> dict[str, Any]:
        return {self.kind: [o.to_json() for o in self.objects]}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.objects == self.objects  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.kind, tuple(self.objects)))

    def __repr__(self) -> str:
        inner = f" {self.joiner} ".join(
            repr(o) if isinstance(o, Asset) else f"({o!r})" for o in self.objects
        )
        return inner


class AssetAll(_AssetBoolean):
    """All of the assets (or conditions) have been updated."""

    kind = "all"
    joiner = "&"

    def evaluate(self, updated: set[str]) -> bool:
        return all(o.evaluate(updated) for o in self.objects)


class AssetAny(_AssetBoolean):
    """Any of the assets (or conditions) has been updated."""

    kind = "any"
    joiner = "|"

    def evaluate(self, updated: set[str]) -> bool:
        return any(o.evaluate(updated) for o in self.objects)


def condition_from_json(data: dict[str, Any]) -> BaseAsset:
    """The condition recorded by `to_json` (as the store keeps it)."""
    if "asset" in data:
        return Asset(data["asset"])
    if "all" in data:
        return AssetAll(*(condition_from_json(d) for d in data["all"]))
    if "any" in data:
        return AssetAny(*(condition_from_json(d) for d in data["any"]))
    raise ValueError(f"not an asset condition: {data!r}")


def as_condition(schedule: object) -> BaseAsset | None:
    """The asset condition of a `schedule=` argument, None if it is not about assets.
    A list or tuple of assets means all of them."""
    if isinstance(schedule, BaseAsset):
        return schedule
    if isinstance(schedule, list | tuple) and not isinstance(schedule, str):
        items = list(schedule)
        if not items:
            raise DagDefinitionError("schedule=[] names no asset; use schedule=None instead")
        for item in items:
            if not isinstance(item, BaseAsset):
                raise DagDefinitionError(
                    f"a schedule list must hold assets only, not {type(item).__name__} {item!r}"
                )
        return items[0] if len(items) == 1 else AssetAll(*items)
    return None


def as_outlets(task_id: str, outlets: object) -> list[Asset]:
    if outlets is None:
        return []
    items = [outlets] if isinstance(outlets, BaseAsset) else outlets
    if not isinstance(items, list | tuple):
        raise DagDefinitionError(f"task {task_id!r}: outlets must be a list of Assets, not {outlets!r}")
    out: list[Asset] = []
    for item in items:
        if not isinstance(item, Asset):
            raise DagDefinitionError(
                f"task {task_id!r}: outlets must be Assets (not conditions), not {item!r}"
            )
        if item not in out:
            out.append(item)
    return out


class OutletEventAccessor:
    """What a task says about its update of one outlet: `extra` goes into the event."""

    __slots__ = ("asset", "extra")

    def __init__(self, asset: Asset) -> None:
        self.asset = asset
        self.extra: dict[str, Any] = {}


class OutletEventAccessors:
    """`outlet_events` in a task's context: `outlet_events[asset].extra = {...}` (or by
    URI) sets the `extra` of the event its success records for that outlet."""

    def __init__(self, outlets: Iterable[Asset] = ()) -> None:
        self._by_uri = {a.uri: OutletEventAccessor(a) for a in outlets}

    def __getitem__(self, key: Asset | str) -> OutletEventAccessor:
        uri = key.uri if isinstance(key, Asset) else key
        try:
            return self._by_uri[uri]
        except KeyError:
            raise KeyError(
                f"{uri!r} is not an outlet of this task (its outlets: {sorted(self._by_uri)})"
            ) from None

    def __contains__(self, key: object) -> bool:
        uri = key.uri if isinstance(key, Asset) else key
        return uri in self._by_uri

    def extras(self) -> dict[str, dict[str, Any]]:
        """{uri: extra} of the outlets whose extra was set."""
        return {u: dict(a.extra) for u, a in self._by_uri.items() if a.extra}


# One update of an asset as a triggered run sees it (see AssetEventRecord).
AssetEvent = AssetEventRecord
