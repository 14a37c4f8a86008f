"""Table codecs: the declared, named and versioned shape of the values one state table holds.

Every ``StateStore.table(name, codec)`` names a ``Codec``. The store writes each value as MessagePack of
plain data (maps with field names, never pickled objects, never lists whose positions mean something only
to the code), tagged with the codec's ``shape`` and ``version``; on restore it reads it back with that
codec. How to declare one:

- a value that is a msgspec Struct: ``Codec("food_lot", Lot)`` with
  ``class Lot(StateStruct, kw_only=True): facts: int; seen: float; upstream: list[str] = []`` — fields
  are encoded by name (``StateStruct`` is ``array_like=False`` and refuses unknown fields);
- a plain value: ``Codec("window_start", int)``, ``Codec("alert", dict[str, Any])``;
- a table holding several kinds of entry told apart by their key: ``by_key=lambda key: ...`` returning
  each key's value type (e.g. a rule's open conditions beside its per-card state);
- a value kept in memory in another form (a KPI accumulator list): pass ``to_plain(key, value)`` and
  ``from_plain(key, plain)`` converting to and from named plain data.

Changing a shape in a later release:

- adding a field *with a default* to a Struct needs nothing: old values decode with the default;
- anything else (a rename, a new meaning, a removed field) bumps ``version`` and adds
  ``migrations[old_version] = fn(key, plain) -> plain`` turning the old version's plain data into the
  next version's. Values written with version 0 come from the pickled format (before versioned state,
  see ``cityops.engine.state``): ``migrations[0]`` receives them as plain data (tuples as lists,
  the objects format 0 stored as maps of their fields, datetimes as datetimes).

A value that does not decode as its declared shape, a shape name other than the codec's, or a version
newer than the codec's raises ``StateFormatError`` (a ``ConfigError``: the worker stops at start-up,
exit 2) — state is never read by guessing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from cityops.errors import ConfigError

__all__ = ["Codec", "StateFormatError", "StateStruct", "PLAIN", "freeze"]


class StateFormatError(ConfigError):
    """Durable state this release cannot read exactly; the message says what was found and what to do."""


class StateStruct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of values kept in state tables: encoded as a map of field names; an unknown field is refused."""


def _identity(key: Any, value: Any) -> Any:
    return value


_plain_decoder = msgspec.msgpack.Decoder()


class Codec:
    """The shape of one table's values: ``shape`` (a stable name), ``version``, and how to read them.

    ``value_type``: the msgspec type of the encoded value (a ``StateStruct``, ``dict[str, float]``,
    ``Any`` ...); decoding validates against it. ``by_key``: key -> the value type of that key's entry,
    for tables with several kinds of entry (then ``value_type`` is unused). ``to_plain``: (key, value) ->
    what is encoded; ``from_plain``: (key, decoded) -> the in-memory value (default: the value itself).
    ``migrations``: old version -> function(key, plain of that version) -> plain of the next version.
    Errors: ``decode`` raises ``StateFormatError`` (see the module docstring).
    """

    __slots__ = ("shape", "version", "value_type", "by_key", "to_plain", "from_plain", "migrations", "_decoders")

    def __init__(self, shape: str, value_type: Any = Any, *, version: int = 1,
                 by_key: Callable[[Any], Any] | None = None,
                 to_plain: Callable[[Any, Any], Any] | None = None,
                 from_plain: Callable[[Any, Any], Any] | None = None,
                 migrations: Mapping[int, Callable[[Any, Any], Any]] | None = None) -> None:
        if not shape or version < 1:
            raise ValueError(f"codec needs a shape name and a version >= 1, got {shape!r} {version!r}")
        self.shape = shape
        self.version = version
        self.value_type = value_type
        self.by_key = by_key
        self.to_plain = to_plain
        self.from_plain = from_plain
        self.migrations = dict(migrations or {})
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}

    def type_of(self, key: Any) -> Any:
        """The declared type of ``key``'s value."""
        return self.value_type if self.by_key is None else self.by_key(key)

    def _decoder(self, typ: Any) -> msgspec.msgpack.Decoder[Any]:
        dec = self._decoders.get(typ)
        if dec is None:
            dec = self._decoders[typ] = msgspec.msgpack.Decoder(typ)
        return dec

    def __repr__(self) -> str:
        return f"Codec({self.shape!r}, version={self.version})"

    def encode_values(self, keys: list[Any], values: list[Any]) -> list[Any]:
        """What is written for ``values`` (the in-memory values of ``keys``)."""
        fn = self.to_plain
        return values if fn is None else [fn(k, v) for k, v in zip(keys, values)]

    def decode(self, table: str, key: Any, raw: bytes | msgspec.Raw, version: int) -> Any:
        """The in-memory value of ``raw`` written with shape ``version``; StateFormatError if it is not one."""
        try:
            if version == self.version:
                plain = self._decoder(self.type_of(key)).decode(raw)
            elif 0 <= version < self.version:
                plain = _plain_decoder.decode(raw)
                for v in range(version, self.version):
                    step = self.migrations.get(v)
                    if step is None:
                        raise StateFormatError(
                            f"state table {table!r} holds shape {self.shape!r} version {v}, and this release "
                            f"has no migration from it to version {v + 1}: start the release that wrote it, "
                            f"or restore a backup of CITYOPS_DATA_DIR written by a release this one can read")
                    plain = step(key, plain)
                plain = msgspec.convert(plain, self.type_of(key), strict=True)
            else:
                raise StateFormatError(
                    f"state table {table!r} holds shape {self.shape!r} version {version}, newer than this "
                    f"release reads (version {self.version}): run the release that wrote CITYOPS_DATA_DIR "
                    f"or a newer one")
            fn = self.from_plain
            return plain if fn is None else fn(key, plain)
        except (msgspec.ValidationError, msgspec.DecodeError, TypeError, ValueError, KeyError,
                IndexError) as exc:
            if isinstance(exc, StateFormatError):
                raise
            raise StateFormatError(
                f"state table {table!r} key {key!r}: value is not shape {self.shape!r} version "
                f"{version} ({exc}); CITYOPS_DATA_DIR is corrupt or was written by another program: "
                f"restore a backup or move it aside to start empty") from None


PLAIN = Codec("plain", Any, migrations={0: _identity})
"""Untyped plain data (maps, lists, numbers, strings, bytes; arrays come back as lists). For tests and
scratch tables only: a table the service keeps declares its own shape."""


def freeze(value: Any) -> Any:
    """A decoded key: arrays become tuples (a key is hashable, so every array in it was a tuple)."""
    if type(value) is list:
        return tuple(freeze(v) for v in value)
    return value
