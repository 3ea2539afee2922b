"""The base of the typed JSON documents: unknown keys kept, and what was read written back as it
was read.

Every document class lists its known keys in the order Go writes them (``KEYS``) and turns
itself into a dict of JSON values (``_known``: only the keys Go would write, so empty
``omitempty`` values are left out). On top of that, :class:`JSONObject`:

- keeps unknown keys in ``extra``, in their place;
- treats ``null`` as absent when reading;
- for an object that was read (``from_dict``), writes every key whose value is unchanged exactly
  as it was read (a ``"Volumes":null`` or ``"User":""`` that Go's ``omitempty`` would drop
  stays), in the order it was read, and writes changed or new keys in the usual way. So a
  document read and written again gives the same bytes (if it was written by Go: see
  :mod:`soute.image.gojson`), and an edited one changes only where it was edited.

``dataclasses.replace`` builds a fresh object, which forgets what was read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from soute.errors import SouteError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `soute run` 3 ms
    from typing import Any, ClassVar, Self, TypeVar

    T = TypeVar("T")

_MISSING: Any = object()


@dataclass(kw_only=True)
class JSONObject:
    """Unknown keys and the document as read; see the module docstring."""

    if TYPE_CHECKING:  # (dataclasses tell a ClassVar only with typing imported)
        KEYS: ClassVar[tuple[str, ...]]
        SORT_KEYS: ClassVar[bool]
        WHAT: ClassVar[str]
        ALWAYS: ClassVar[frozenset[str]]
    KEYS = ()
    # Whether a fresh object writes all its keys sorted (as Go does for a map[string]RawMessage).
    SORT_KEYS = False
    WHAT = "document"
    # Keys written even when a document was read without them (a manifest's mediaType).
    ALWAYS = frozenset()

    extra: dict[str, Any] = field(default_factory=dict)
    _raw: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _seen: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    # Subclasses implement these two.
    @classmethod
    def _decode(cls, known: dict[str, Any], where: str) -> Self:
        raise NotImplementedError

    def _known(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> Self:
        """Read a decoded JSON object; ``where`` names it in errors."""
        where = where or cls.WHAT
        if not isinstance(data, dict):
            raise invalid(where, f"must be a JSON object, not {json_type(data)}")
        keys = set(cls.KEYS)
        known = {k: v for k, v in data.items() if k in keys and v is not None}
        obj = cls._decode(known, where)
        obj.extra = {k: v for k, v in data.items() if k not in keys}
        obj._raw = dict(data)
        obj._seen = obj._known()
        return obj

    @property
    def read_keys(self) -> tuple[str, ...] | None:
        """The keys of the document as it was read, or None for an object built in code."""
        return None if self._raw is None else tuple(self._raw)

    def read_value(self, key: str, default: Any = None) -> Any:
        """The value ``key`` had in the document as read (``default`` if absent or built in
        code): to tell ``[]`` from absent where Go would."""
        return default if self._raw is None else self._raw.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object to write: plain dicts, lists, strings, numbers."""
        new = self._known()
        if self._raw is None or self._seen is None:
            out = {**new, **{k: v for k, v in self.extra.items() if k not in new}}
            return dict(sorted(out.items())) if self.SORT_KEYS else out
        out = _merge(self.KEYS, self._raw, self._seen, new, self.extra, self.ALWAYS)
        if self.SORT_KEYS and list(self._raw) == sorted(self._raw):
            out = dict(sorted(out.items()))
        return out


def _merge(
    order: tuple[str, ...],
    raw: dict[str, Any],
    seen: dict[str, Any],
    new: dict[str, Any],
    extra: dict[str, Any],
    always: frozenset[str],
) -> dict[str, Any]:
    pos = {k: i for i, k in enumerate(order)}
    # Keys given a value since the document was read: each goes before the first read key that
    # Go writes after it.
    pending = [
        k
        for k in order
        if k in new and k not in raw and (k in always or new[k] != seen.get(k, _MISSING))
    ]
    out: dict[str, Any] = {}
    p = 0
    for key, raw_value in raw.items():
        if key in pos:
            while p < len(pending) and pos[pending[p]] < pos[key]:
                out[pending[p]] = new[pending[p]]
                p += 1
            if new.get(key, _MISSING) == seen.get(key, _MISSING):
                out[key] = raw_value
            elif key in new:
                out[key] = new[key]
        elif key in extra:
            out[key] = extra[key]
    for key in pending[p:]:
        out[key] = new[key]
    for key, value in extra.items():
        if key not in raw:
            out[key] = value
    return out


def invalid(where: str, problem: str) -> SouteError:
    return SouteError(f"invalid {where}: {problem}")


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# Readers for the values of known keys (never None: from_dict drops nulls first).


def get_str(d: dict[str, Any], key: str, where: str) -> str:
    value = d.get(key, "")
    if not isinstance(value, str):
        raise invalid(where, f"{key} must be a string, not {json_type(value)}")
    return value


def get_int(d: dict[str, Any], key: str, where: str, default: int = 0) -> int:
    value = d.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Go reads 2.0 into an int field; so do we
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(where, f"{key} must be an integer, not {json_type(value)}")
    return value


def get_bool(d: dict[str, Any], key: str, where: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise invalid(where, f"{key} must be a boolean, not {json_type(value)}")
    return value


def get_str_list(d: dict[str, Any], key: str, where: str) -> list[str]:
    value = d.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(where, f"{key} must be an array of strings")
    return list(value)


def get_str_map(d: dict[str, Any], key: str, where: str) -> dict[str, str]:
    value = d.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise invalid(where, f"{key} must be an object of strings")
    return dict(value)


def get_set(d: dict[str, Any], key: str, where: str) -> list[str]:
    """A Go ``map[string]struct{}`` (``{"80/tcp":{}}``) as the list of its keys."""
    value = d.get(key, {})
    if not isinstance(value, dict):
        raise invalid(where, f"{key} must be an object, not {json_type(value)}")
    return list(value)


def get_obj(d: dict[str, Any], key: str, where: str, read: Callable[[Any, str], T]) -> T | None:
    value = d.get(key)
    return None if value is None else read(value, f"{where}: {key}")


def get_obj_list(d: dict[str, Any], key: str, where: str, read: Callable[[Any, str], T]) -> list[T]:
    value = d.get(key, [])
    if not isinstance(value, list):
        raise invalid(where, f"{key} must be an array, not {json_type(value)}")
    return [read(v, f"{where}: {key}[{i}]") for i, v in enumerate(value)]


def sorted_map(m: dict[str, Any]) -> dict[str, Any]:
    """Go writes map keys sorted."""
    return dict(sorted(m.items()))


def set_map(keys: Iterable[str]) -> dict[str, Any]:
    """A key list back to Go's ``map[string]struct{}`` form, sorted."""
    return {k: {} for k in sorted(set(keys))}
