"""soute analyze: where an image's bytes go, layer by layer, and how many of them are wasted.

The layers are read as the store keeps them (uncompressed tars with overlay-style whiteouts),
streamed one after the other, base first, never unpacked. A view of the merged file system
(path -> which layer wrote it, its type and size) is kept while they are read.

Definitions (the numbers ``soute analyze`` prints, and what ``--ci`` checks):

- **added / changed / removed** (per layer): *added* counts the paths the layer writes that
  no lower layer holds; *changed* those it writes over a path a lower layer holds (a
  directory listed again with the same mode and owner is not counted: overlayfs lists every
  parent of a changed file, so that would drown the count); *removed* the lower paths that
  its whiteouts (``.wh.NAME``), opaque directories (``.wh..wh..opq``) and type changes (a file
  written where a directory was) take out of the view, each path counted, so a deleted
  directory counts with everything in it. Whiteouts of a layer act on the lower layers only,
  before its own entries, whatever their order in the tar.
- **wasted bytes**: the content bytes (tar headers and padding aside) of every regular file
  that a later layer hides, either *shadowed* (the same path written again) or *removed*
  (whiteout, opaque directory, or a parent replaced by a non-directory). Each wasted file is
  attributed to the layer (instruction) that added it and the first later layer that hid it;
  it is counted once, by the layer that hid it first. A file still reachable through a hard
  link of its own layer is not wasted.
- **package records** (``var/lib/dpkg/``, debconf's caches, ``ld.so.cache``...) that a later
  layer rewrites are not wasted bytes: every install rewrites them and no Dockerfile change
  on top avoids it. They are reported apart (``records_rewritten``); removed ones still count.
- **total bytes**: the sum of the sizes of all layers, as ``soute history`` shows them (the
  uncompressed tars).
- **efficiency**: ``1 - wasted / total`` (1.0 for an image without bytes). As in dive, 1.0
  means no layer stores bytes that the image cannot see; unlike dive, the copy that stays
  visible is never counted as waste, so the score of an image whose only flaw is one
  rewritten file falls by that file's first copy, not by both.

Suggestions are made only from evidence in the image (its layers and its history) and name
the lint rule (:mod:`soute.lint.rules`) that would have caught the cause in the Dockerfile.
"""

from __future__ import annotations

import re
import tarfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from soute.errors import SouteError
from soute.lint.rules import find_rule

if TYPE_CHECKING:
    from soute.store.store import Image, Store

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
AUFS_META = ".wh..wh."  # aufs' own bookkeeping (.wh..wh.plnk...), not part of the image

DEFAULT_LOWEST_EFFICIENCY = 0.9
BIG_BASE = 100_000_000  # a first layer this large earns the smaller-base suggestion
LEFTOVER_MIN = 1_000_000  # temporary files and caches below this are not worth a word
GROUP_DEPTH = 3  # wasted files are grouped by the first three levels of their directory

# (pattern on the path, what it is): files that only a build needs
_APT_LISTS = re.compile(r"^var/lib/apt/lists/(?!lock$|partial/|auxfiles/)")
_APT_ARCHIVES = re.compile(r"^var/cache/apt/archives/[^/]+\.deb$")
_LEFTOVERS = re.compile(r"^(tmp|var/tmp|root/\.cache)/")
# Package managers' own records: any install rewrites them, so a copy in the base shadowed
# by a later install is waste (counted) that no Dockerfile change on top avoids (no advice).
_BOOKKEEPING = re.compile(
    r"^(var/lib/dpkg/|var/lib/apt/extended_states$|var/cache/debconf/|var/cache/ldconfig/"
    r"|etc/ld\.so\.cache$|var/log/|lib/apk/db/|etc/apk/world$|var/lib/rpm/)"
)
_APT_UPGRADE = re.compile(r"\bapt(-get)?\s+(-\S+\s+)*(dist-|full-)?upgrade\b")


# ------------------------------------------------------------------------------ the results


@dataclass
class LayerReport:
    index: int  # 0 is the base
    diff_id: str
    size: int  # the uncompressed tar, as soute history shows it
    created_by: str  # the full history entry ("" when the history has none)
    comment: str = ""  # the history's comment: what names a layer made without a Dockerfile
    added: int = 0
    changed: int = 0
    removed: int = 0
    wasted: int = 0  # bytes of this layer that later layers hide

    @property
    def instruction(self) -> str:
        return short_instruction(self.created_by) or self.comment

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "diff_id": self.diff_id, "size": self.size,
            "created_by": self.created_by, "comment": self.comment,
            "instruction": self.instruction,
            "added": self.added, "changed": self.changed, "removed": self.removed,
            "wasted": self.wasted,
        }  # fmt: skip


@dataclass(frozen=True)
class WastedFile:
    path: str  # absolute, "/var/lib/apt/lists/..."
    size: int
    added_by: int  # layer index
    hidden_by: int  # layer index
    how: str  # "shadowed" (written again) or "removed"


@dataclass(frozen=True)
class WasteGroup:
    path: str  # a directory
    size: int
    files: int
    added_by: int
    hidden_by: int


@dataclass(frozen=True)
class Suggestion:
    rule: str | None  # a lint rule id, when one catches the cause in the Dockerfile
    message: str
    fix: str
    size: int  # the bytes at stake
    layers: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        r = find_rule(self.rule) if self.rule else None
        return {
            "rule": self.rule, "name": r.name if r else None, "message": self.message,
            "fix": self.fix, "bytes": self.size, "layers": list(self.layers),
        }  # fmt: skip


@dataclass
class Analysis:
    image: str  # the image ID
    names: tuple[str, ...]
    layers: list[LayerReport]
    wasted_files: list[WastedFile]  # largest first
    suggestions: list[Suggestion] = field(default_factory=list)
    # Package managers' records (dpkg status...) that a later layer rewrote: not waste.
    records: list[WastedFile] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def wasted(self) -> int:
        return sum(w.size for w in self.wasted_files)

    @property
    def efficiency(self) -> float:
        total = self.total_size
        if total <= 0:
            return 1.0
        return max(0.0, min(1.0, 1.0 - self.wasted / total))

    def groups(self) -> list[WasteGroup]:
        """The wasted files summed by directory (its first levels) and by the pair of layers
        that added and hid them, largest first."""
        acc: dict[tuple[str, int, int], list[int]] = defaultdict(lambda: [0, 0])
        for w in self.wasted_files:
            parts = w.path.strip("/").split("/")[:-1][:GROUP_DEPTH]
            slot = acc["/" + "/".join(parts), w.added_by, w.hidden_by]
            slot[0] += w.size
            slot[1] += 1
        out = [WasteGroup(p, s, n, a, h) for (p, a, h), (s, n) in acc.items()]
        return sorted(out, key=lambda g: (-g.size, g.path, g.added_by))

    def as_dict(self, top: int = 0) -> dict[str, Any]:
        """The JSON schema (stable: keys are only ever added)."""
        files = self.wasted_files[:top] if top > 0 else self.wasted_files
        groups = self.groups()
        by_index = {layer.index: layer for layer in self.layers}

        def who(i: int) -> dict[str, Any]:
            return {"layer": i, "created_by": by_index[i].created_by}

        return {
            "image": self.image,
            "names": list(self.names),
            "size": self.total_size,
            "layers": [layer.as_dict() for layer in self.layers],
            "wasted": {
                "total": self.wasted,
                "files": len(self.wasted_files),
                "paths": [{"path": w.path, "size": w.size, "how": w.how,
                           "added_by": who(w.added_by), "hidden_by": who(w.hidden_by)}
                          for w in files],
                "groups": [{"path": g.path, "size": g.size, "files": g.files,
                            "added_by": who(g.added_by), "hidden_by": who(g.hidden_by)}
                           for g in (groups[:top] if top > 0 else groups)],
            },
            "records_rewritten": {"total": sum(w.size for w in self.records),
                                  "files": len(self.records)},
            "efficiency": self.efficiency,
            "suggestions": [s.as_dict() for s in self.suggestions],
        }  # fmt: skip


def short_instruction(created_by: str) -> str:
    """A history entry as the Dockerfile line it came from: BuildKit's ``RUN /bin/sh -c X #
    buildkit`` reads ``RUN X`` (the shell is what every RUN has)."""
    text = " ".join(created_by.replace("\t", " ").split())
    text = text.removesuffix(" # buildkit")
    if text.startswith("/bin/sh -c #(nop) "):  # the classic builder's metadata steps
        text = text[len("/bin/sh -c #(nop) "):]
    elif text.startswith("/bin/sh -c "):  # the classic builder's RUN
        text = "RUN " + text[len("/bin/sh -c "):]
    return re.sub(r"^RUN (\|\d+ (?:\S+=\S* )*)?/bin/sh -c ", "RUN ", text)


# ------------------------------------------------------------------------------ reading layers


@dataclass(slots=True)
class _Entry:
    layer: int
    kind: str  # "file", "dir", "hardlink", "other" (symlinks and devices: no content)
    size: int
    owner: tuple[int, int, int]  # mode, uid, gid: what a re-listed directory may change


# (path, kind, size, owner, link target) of one tar member, path without "./" or "/"
_Member = tuple[str, str, int, tuple[int, int, int], str]


def _clean(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def read_layer(stream: IO[bytes]) -> Iterator[_Member]:
    """The members of one layer tar, streamed (data is skipped, never read into memory)."""
    seekable = getattr(stream, "seekable", lambda: False)()
    with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tf:
        while (m := tf.next()) is not None:
            tf.members.clear()  # tarfile keeps every header otherwise
            if m.isdir():
                kind = "dir"
            elif m.isreg():
                kind = "file"
            elif m.islnk():
                kind = "hardlink"
            else:
                kind = "other"
            yield (_clean(m.name), kind, m.size if kind == "file" else 0,
                   (m.mode, m.uid, m.gid), _clean(m.linkname) if kind == "hardlink" else "")


class _View:
    """The merged file system of the layers read so far."""

    def __init__(self) -> None:
        self.live: dict[str, _Entry] = {}
        self.kids: dict[str, set[str]] = defaultdict(set)  # directory -> paths under it
        self.links: dict[str, list[str]] = defaultdict(list)  # file -> its hard links
        self.wasted: list[WastedFile] = []

    def _register(self, path: str) -> None:
        while path:
            parent = _parent(path)
            siblings = self.kids[parent]
            if path in siblings:
                return
            siblings.add(path)
            path = parent

    def _subtree(self, path: str) -> list[str]:
        out, stack = [], list(self.kids.get(path, ()))
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(self.kids.get(p, ()))
        return out

    def _hide(self, path: str, layer: int, how: str) -> bool:
        """Take a lower layer's entry out of the view; True when there was one."""
        e = self.live.get(path)
        if e is None or e.layer >= layer:
            return False
        del self.live[path]
        if e.kind == "file" and e.size > 0 and not self._hand_over(path, e):
            self.wasted.append(WastedFile("/" + path, e.size, e.layer, layer, how))
        return True

    def _hand_over(self, path: str, e: _Entry) -> bool:
        """A hard link of the same layer still in view keeps the content alive."""
        links = self.links.pop(path, [])
        for i, other in enumerate(links):
            o = self.live.get(other)
            if o is not None and o.layer == e.layer and o.kind == "hardlink":
                o.kind, o.size = "file", e.size
                self.links[other].extend(links[i + 1:])
                return True
        return False

    def _remove_under(self, path: str, layer: int) -> int:
        return sum(self._hide(p, layer, "removed") for p in self._subtree(path))

    def apply(self, index: int, members: Iterable[_Member], report: LayerReport) -> None:
        writes: list[_Member] = []
        for m in members:
            path = m[0]
            base = path.rpartition("/")[2]
            if base == OPAQUE:
                report.removed += self._remove_under(_parent(path), index)
            elif base.startswith(AUFS_META):
                continue
            elif base.startswith(WHITEOUT):
                target = "/".join(filter(None, (_parent(path), base[len(WHITEOUT):])))
                report.removed += self._hide(target, index, "removed")
                report.removed += self._remove_under(target, index)
            elif path:
                writes.append(m)
        # Whiteouts first: they only ever hide lower layers, whatever the tar's order.
        for path, kind, size, owner, link in writes:
            old = self.live.get(path)
            for anc in _ancestors(path):  # a lower non-directory where this needs a directory
                a = self.live.get(anc)
                if a is not None and a.kind != "dir" and a.layer < index:
                    report.removed += self._hide(anc, index, "removed")
            if old is not None and old.layer < index:
                if kind != "dir" or old.kind != "dir":
                    report.changed += 1
                    self._hide(path, index, "shadowed")
                    if kind != "dir":
                        report.removed += self._remove_under(path, index)
                elif owner != old.owner:
                    report.changed += 1
            elif old is None:
                report.added += 1
            self.live[path] = _Entry(index, kind, size, owner)
            self._register(path)
            if kind == "hardlink" and link:
                target = self.live.get(link)
                if target is not None and target.layer == index:
                    self.links[link].append(path)


def _ancestors(path: str) -> Iterator[str]:
    while "/" in path:
        path = _parent(path)
        yield path


def analyze_layers(
    layers: Sequence[tuple[str, int, str, str]],
    open_layer: Callable[[str], IO[bytes]],
    *,
    image: str = "",
    names: Sequence[str] = (),
) -> Analysis:
    """The analysis of layers given as (diff_id, size, created_by, comment), base first;
    ``open_layer(diff_id)`` opens a layer's uncompressed tar."""
    view = _View()
    reports = []
    for i, (diff_id, size, created_by, comment) in enumerate(layers):
        report = LayerReport(i, diff_id, size, created_by, comment)
        with open_layer(diff_id) as stream:
            view.apply(i, read_layer(stream), report)
        reports.append(report)
    ordered = sorted(view.wasted, key=lambda w: (-w.size, w.path, w.added_by))
    # Package records rewritten by a later install: no Dockerfile change avoids them, so
    # they are shown apart and do not count as waste.
    records = [w for w in ordered if w.how == "shadowed" and _BOOKKEEPING.match(w.path[1:])]
    wasted = [w for w in ordered if w not in records]
    for w in wasted:
        reports[w.added_by].wasted += w.size
    result = Analysis(image, tuple(names), reports, wasted, records=records)
    result.suggestions = suggest(result, view)
    return result


def analyze_image(store: Store, image: Image) -> Analysis:
    """The analysis of an image of the store."""
    from soute.image.config import ImageConfig, normalise_history

    config = ImageConfig.from_json(store.blobs.read(image.id))
    history = [h for h in normalise_history(config) if not h.empty_layer]
    made_by = [(h.created_by, h.comment) for h in history]
    made_by += [("", "")] * (len(image.layers) - len(made_by))
    layers = [(d, size, *made_by[i]) for i, (d, size) in enumerate(image.layers)]
    return analyze_layers(layers, store.open_layer, image=image.id, names=image.tags)


# ------------------------------------------------------------------------------ suggestions


def suggest(a: Analysis, view: _View) -> list[Suggestion]:
    """What to change, from what the image shows; each names its lint rule when one exists."""
    from soute.image.inspect import human_size

    def made(i: int) -> str:
        return f"layer {i} ({_quote(a.layers[i].instruction)})"

    out: list[Suggestion] = []
    pairs: dict[tuple[int, int, str], int] = defaultdict(int)
    records: dict[tuple[int, int, str], int] = defaultdict(int)  # of which bookkeeping
    apt_waste: dict[tuple[int, int], int] = defaultdict(int)
    for w in a.wasted_files:
        if _APT_LISTS.match(w.path[1:]):
            apt_waste[w.added_by, w.hidden_by] += w.size
            continue
        pairs[w.added_by, w.hidden_by, w.how] += w.size
        if _BOOKKEEPING.match(w.path[1:]):
            records[w.added_by, w.hidden_by, w.how] += w.size

    for (i, j, how), size in pairs.items():
        if how == "removed":
            out.append(Suggestion(
                "SOU006", f"{human_size(size)} added by {made(i)} is removed by {made(j)}: "
                "the bytes stay in the image", _fix("SOU006"), size, (i, j)))
            continue
        cmd_i, cmd_j = a.layers[i].instruction, a.layers[j].instruction
        if cmd_j.startswith("RUN ") and re.search(r"\bch(mod|own)\b", cmd_j) \
                and cmd_i.startswith(("COPY ", "ADD ")):
            fix, rule = "set the mode or owner as the file is copied (COPY --chmod/--chown)", None
        elif cmd_i.startswith("RUN ") and cmd_j.startswith("RUN "):
            fix, rule = "write the files once, in one RUN (join the two)", "SOU005"
        elif size == records[i, j, how]:
            continue
        else:
            fix, rule = "write the files once, in their final form", None
        out.append(Suggestion(
            rule, f"{human_size(size)} added by {made(i)} is written again by {made(j)}: "
            "the first copy stays in the image", fix, size, (i, j)))

    for (i, j), size in apt_waste.items():
        out.append(Suggestion(
            "SOU003", f"apt's package lists ({human_size(size)}) downloaded by {made(i)} are "
            f"removed only by {made(j)}: they stay in the image", _fix("SOU003"), size, (i, j)))
    _left_behind(a, view, out, made)

    if a.layers and a.layers[0].size >= BIG_BASE:
        base = a.layers[0].size
        share = base / a.total_size
        out.append(Suggestion(
            None, f"the base layer is {human_size(base)} ({share:.0%} of the image)",
            "start from a smaller base (a -slim or minbase variant, busybox) or build in one "
            "stage and COPY --from it only what runs", base, (0,)))

    for layer in a.layers:
        if layer.instruction.startswith("RUN ") and _APT_UPGRADE.search(layer.instruction):
            out.append(Suggestion(
                "SOU004", f"{made(layer.index)} upgrades packages in place "
                f"({human_size(layer.size)})", _fix("SOU004"), layer.size, (layer.index,)))
    out.sort(key=lambda s: (-s.size, s.layers, s.message))
    return out


def _left_behind(a: Analysis, view: _View, out: list[Suggestion],
                 made: Callable[[int], str]) -> None:
    """Build-time files still in the final view: package lists, .deb files, temp files."""
    from soute.image.inspect import human_size

    sums: dict[tuple[str, int], int] = defaultdict(int)
    for path, e in view.live.items():
        if e.kind != "file" or e.size <= 0:
            continue
        for what, pattern in (("lists", _APT_LISTS), ("debs", _APT_ARCHIVES),
                              ("tmp", _LEFTOVERS)):
            if pattern.match(path):
                sums[what, e.layer] += e.size
                break
    for (what, i), size in sorted(sums.items()):
        if what == "lists":
            out.append(Suggestion(
                "SOU003", f"apt's package lists ({human_size(size)}) are left in {made(i)}",
                _fix("SOU003"), size, (i,)))
        elif what == "debs":
            out.append(Suggestion(
                None, f"downloaded .deb files ({human_size(size)}) are left in {made(i)}",
                "end the RUN with 'apt-get clean'", size, (i,)))
        elif size >= LEFTOVER_MIN:
            out.append(Suggestion(
                None, f"temporary files and caches ({human_size(size)}, in /tmp, /var/tmp or "
                f"/root/.cache) are left in {made(i)}",
                "remove them in the same RUN, or use RUN --mount=type=cache or type=tmpfs "
                "(pip: --no-cache-dir)", size, (i,)))


def _fix(rule_id: str) -> str:
    rule = find_rule(rule_id)
    return rule.fix if rule else ""


def _quote(instruction: str, width: int = 60) -> str:
    from soute.image.inspect import ellipsis

    return ellipsis(instruction, width) if instruction else "no history"


# ------------------------------------------------------------------------------ --ci


@dataclass(frozen=True)
class Check:
    name: str  # the option: lowest-efficiency, highest-wasted-bytes
    passed: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message}


def ci_checks(a: Analysis, lowest_efficiency: float = DEFAULT_LOWEST_EFFICIENCY,
              highest_wasted_bytes: int | None = None) -> list[Check]:
    from soute.image.inspect import human_size

    eff = a.efficiency
    ok = eff >= lowest_efficiency
    checks = [Check("lowest-efficiency", ok,
                    f"efficiency {eff:.4f} {'>=' if ok else '<'} {lowest_efficiency:g}")]
    if highest_wasted_bytes is not None:
        ok = a.wasted <= highest_wasted_bytes
        checks.append(Check(
            "highest-wasted-bytes", ok,
            f"wasted bytes {a.wasted} ({human_size(a.wasted)}) {'<=' if ok else '>'} "
            f"{highest_wasted_bytes} ({human_size(highest_wasted_bytes)})"))
    return checks


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
          "gib": 1024**3, "tib": 1024**4}


def parse_size(text: str) -> int:
    """``1000``, ``20MB``/``20M`` (SI, as soute images shows sizes), ``20MiB`` (binary),
    ``1.5GB``; units in any case."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", text)
    unit = m and _UNITS.get(m.group(2).lower())
    if not m or unit is None:
        raise SouteError(f"invalid size {text!r}", "give bytes, or a size like 20MB or 20MiB")
    return int(float(m.group(1)) * unit)


def parse_ratio(text: str) -> float:
    """A ratio between 0 and 1 (``0.9``), or a percentage (``90%``)."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise SouteError(f"invalid ratio {text!r}", "give a number from 0 to 1, like 0.9, or 90%")
    return value
