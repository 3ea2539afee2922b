"""Apply a layer tar to a directory: onto a full tree, or as an overlayfs lower dir.

The tar is read by our own streaming reader rather than :mod:`tarfile`: tarfile's stream mode
parses about ten thousand headers a second, keeps every member in a list, and treats a corrupt
or truncated header in the middle of an archive as its end, silently dropping the rest of the
layer. Ours reads ustar, GNU (long names, old sparse) and PAX (sparse 0.0/0.1/1.0, xattrs)
headers, verifies every checksum, and fails on truncation.

Rules (OCI ``layer.md``, and docker/containerd where the spec is silent):

- Names: a leading ``/`` is stripped and ``.``/empty components dropped, as docker and
  containerd do (an absolute name means "from the image root", so it stays inside ``dest``);
  ``..`` is resolved lexically and refused if it climbs above the root. The root entry itself
  (``./``) is skipped, like docker.
- Parent components are resolved inside ``dest`` the way the container will see them:
  symlinks are followed, an absolute target restarts from ``dest`` (``var/run -> /run``), and a
  target whose ``..`` climbs above ``dest`` is refused. The last component is never followed:
  files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` after removing what was there.
- Symlink targets are stored as they are; they are only resolved when a later entry writes
  through them (above).
- Hardlinks must name a non-directory written earlier in this same layer (docker accepts any
  existing path; the spec says links outside the layer "may fail"; we refuse them).
- A whiteout ``.wh.<name>`` and an opaque whiteout ``.wh..wh..opq`` hide only what lower layers
  put there: entries this layer writes are kept wherever the whiteout appears in the stream.
  Malformed whiteouts (``.wh.``, ``.wh..``, ``.wh...``) are refused. AUFS metadata
  (``.wh..wh.*``) is skipped.
- Metadata: owner (lchown), then xattrs (``security.capability`` included; overlayfs'
  own ``*.overlay.*`` never), then mode with setuid/setgid/sticky (chown clears those), then
  mtime (atime = mtime). A hardlink takes its target's inode as it is.
- Devices are created only by root; otherwise they are skipped with a logged warning
  (fifos are created either way). Without root, owners are left as they are (one warning).
- Directory modes and mtimes are set last, deepest first, so creating children does not
  change them and a read-only directory can still be filled. A directory the layer does not
  name keeps the mtime it had, even when entries inside it changed (as umoci does), so the
  result matches what overlayfs shows.
- Missing parents are created with mode 0755, owned by the applying user.
- Duplicate entries: the last one wins (dir over dir merges, anything else replaces).
- Any refusal is one :class:`SouteError` naming the entry; nothing is written outside ``dest``
  (entries before the bad one stay applied inside it).
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import shutil
import stat
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from soute.errors import SouteError
from soute.layer.write import (
    BLOCK,
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    OVERLAY_XATTR_PREFIXES,
    WHITEOUT_PREFIX,
    keep_xattr,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MAX_SPECIAL = 1 << 20  # PAX and GNU long-name payloads: Go's archive/tar uses the same bound
_MAX_SYMLINK_HOPS = 40  # the kernel's limit (ELOOP)
_ZERO_BLOCK = bytes(BLOCK)
_AUFS_META = b".wh..wh."

_HEADER_ONLY_TYPES = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})
_DIR_TYPES = frozenset({b"5", b"D"})  # D: a GNU dump directory, whose data we skip
# Regular files (0, NUL, 7 contiguous, S old GNU sparse), links, devices, dirs, fifos.
_CREATABLE = frozenset({b"0", b"\x00", b"7", b"S", b"1", b"2", b"3", b"4", b"5", b"D", b"6"})


@dataclass(slots=True)
class _Member:
    """One tar entry, with PAX and GNU extensions already folded in."""

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int  # data bytes stored in the archive
    mtime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    sparse: list[tuple[int, int]] | None = None  # data segments (offset, length) if sparse
    real_size: int = 0  # logical size of a sparse file
    sparse_map_in_data: bool = False  # GNU sparse 1.0: the map opens the data


def apply_layer(stream: BinaryIO, dest: Path, *, overlay: bool, chroot: bool = False) -> None:
    """Apply the uncompressed layer tar read from ``stream`` to the directory ``dest``.

    ``overlay=False``: ``dest`` is the full tree of the layers below; whiteouts delete.
    ``overlay=True``: ``dest`` is an empty directory that becomes an overlayfs lower dir;
    whiteouts become char devices 0/0 and opaque whiteouts the ``trusted.overlay.opaque=y``
    xattr (``user.overlay.opaque`` when trusted xattrs are not permitted).

    ``chroot=True`` reads symlinks as if ``dest`` were the root of the system: ``..`` stops
    there instead of being refused, as BuildKit's chrooted unpack does for ADD archives.
    Names that climb above ``dest`` are refused either way.

    The stream is read to its end, so a digest computed around it covers every byte.
    """
    applier = _Applier(dest, overlay=overlay, chroot=chroot)
    reader = _TarReader(stream)
    while (member := reader.next()) is not None:
        try:
            applier.apply(member, reader)
        except OSError as err:
            raise SouteError(
                f"cannot apply layer entry {_show(member.name)}: {err.strerror or err}"
            ) from err
        except (OverflowError, ValueError) as err:  # ids, times, devices out of range
            raise SouteError(f"cannot apply layer entry {_show(member.name)}: {err}") from err
    try:
        applier.finish()
    except OSError as err:
        raise SouteError(f"cannot apply layer to {dest}: {err.strerror or err}") from err
    reader.drain()


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


def _refuse(name: bytes, reason: str) -> SouteError:
    return SouteError(f"refusing layer entry {_show(name)}: {reason}")


# --- the tar reader -------------------------------------------------------------------------


class _TarReader:
    """Sequential tar reader over any readable binary stream (pipes included)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self._offset = 0  # archive offset of the next byte handed out
        self._pending = 0  # data and padding of the current member not yet consumed
        self._current: bytes = b""
        self._ended = False

    # -- low level

    def _read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at end of stream."""
        end = self._pos + size
        if end <= len(self._buf):
            data = self._buf[self._pos : end]
            self._pos = end
        else:
            parts = [self._buf[self._pos :]]
            have = len(parts[0])
            while have < size:
                chunk = self._stream.read(max(size - have, _CHUNK))
                if not chunk:
                    break
                parts.append(chunk)
                have += len(chunk)
            joined = b"".join(parts)
            data = joined[:size]
            self._buf = joined[size:] if have > size else b""
            self._pos = 0
        self._offset += len(data)
        return data

    def _read_exact(self, size: int, what: str) -> bytes:
        data = self._read(size)
        if len(data) != size:
            raise self._truncated(what, size, len(data))
        return data

    def _truncated(self, what: str, wanted: int, got: int) -> SouteError:
        return SouteError(
            f"layer tar is truncated: {what} needs {wanted} bytes, the stream ended after {got}"
        )

    def _skip(self, size: int, what: str) -> None:
        while size:
            got = len(self._read(min(size, _CHUNK)))
            if not got:
                raise self._truncated(what, size, 0)
            size -= got

    # -- members

    def next(self) -> _Member | None:
        if self._ended:
            return None
        if self._pending:
            self._skip(self._pending, f"entry {_show(self._current)}")
            self._pending = 0
        pax: dict[bytes, bytes] = {}
        sparse00: list[int] = []
        long_name: bytes | None = None
        long_link: bytes | None = None
        first = self._offset == 0
        while True:
            at = self._offset
            block = self._read(BLOCK)
            if not block:
                self._ended = True  # no end-of-archive blocks: accepted, like Go's reader
                if pax or long_name is not None or long_link is not None:
                    raise self._truncated("an extended header's entry", BLOCK, 0)
                return None
            if len(block) != BLOCK:
                err = self._truncated(f"the header at offset {at}", BLOCK, len(block))
                if first and (hint := _compressed_hint(block)):
                    err = SouteError(err.message, hint=hint)
                raise err
            if block == _ZERO_BLOCK:
                self._ended = True
                return None
            _verify_checksum(block, at, first)
            first = False
            typeflag = block[156:157]
            size = _number(block[124:136], at)
            if typeflag in (b"x", b"g", b"L", b"K"):
                if not 0 <= size <= _MAX_SPECIAL:
                    raise SouteError(
                        f"layer tar has an extended header of {size} bytes at offset {at}"
                    )
                payload = self._read_exact(size, f"the extended header at offset {at}")
                self._skip(-size % BLOCK, "padding")
                if typeflag == b"x":
                    _parse_pax(payload, pax, sparse00, at)
                elif typeflag == b"L":
                    long_name = payload.split(b"\x00", 1)[0]
                elif typeflag == b"K":
                    long_link = payload.split(b"\x00", 1)[0]
                # "g" (global headers, e.g. git archive's commit comment) is ignored, like docker.
                continue
            member = self._member(block, at, size, typeflag)
            if long_name is not None:
                member.name = long_name
            if long_link is not None:
                member.linkname = long_link
            _fold_pax(member, pax, sparse00, at)
            if member.sparse_map_in_data:
                self._read_sparse_map(member)
            self._current = member.name
            has_data = member.type not in _HEADER_ONLY_TYPES
            self._pending = (member.size + (-member.size % BLOCK)) if has_data else 0
            return member

    def _member(self, block: bytes, at: int, size: int, typeflag: bytes) -> _Member:
        magic = block[257:263]
        name = _cstr(block[0:100])
        if magic == b"ustar\x00":  # POSIX ustar: a prefix field extends the name
            prefix_end = 476 if block[508:512] == b"tar\x00" else 500  # star keeps times there
            prefix = _cstr(block[345:prefix_end])
            if prefix:
                name = prefix + b"/" + name
        if typeflag == b"\x00" and name.endswith(b"/"):
            typeflag = b"5"  # pre-POSIX archives mark directories by the trailing slash only
        if size < 0:
            raise SouteError(f"layer tar has a negative size at offset {at}")
        device = typeflag in (b"3", b"4") and magic[:5] == b"ustar"
        member = _Member(
            name=name,
            type=typeflag,
            mode=_number(block[100:108], at) & 0o7777,
            uid=_number(block[108:116], at),
            gid=_number(block[116:124], at),
            size=size,
            mtime_ns=_number(block[136:148], at) * 1_000_000_000,
            linkname=_cstr(block[157:257]) if typeflag in (b"1", b"2") else b"",
            devmajor=_number(block[329:337], at) if device else 0,
            devminor=_number(block[337:345], at) if device else 0,
        )
        if typeflag == b"S":  # old GNU sparse: the map lives in the header and extensions
            member.sparse = []
            self._gnu_sparse(block[386:482], member.sparse, at)
            extended = block[482]
            member.real_size = _number(block[483:495], at)
            while extended:
                ext = self._read_exact(BLOCK, "a GNU sparse extension header")
                self._gnu_sparse(ext[:504], member.sparse, at)
                extended = ext[504]
        return member

    @staticmethod
    def _gnu_sparse(area: bytes, out: list[tuple[int, int]], at: int) -> None:
        for i in range(0, len(area), 24):
            if area[i] == 0:
                break
            out.append((_number(area[i : i + 12], at), _number(area[i + 12 : i + 24], at)))

    def _read_sparse_map(self, member: _Member) -> None:
        """GNU sparse 1.0: decimal lines (count, then offset/length pairs) open the data."""
        consumed = 0
        pending = b""

        def numbers() -> Iterator[int]:
            nonlocal consumed, pending
            while True:
                while b"\n" not in pending:
                    if consumed >= member.size or consumed > _MAX_SPECIAL:
                        raise _refuse(member.name, "bad GNU sparse map")
                    block = self._read_exact(BLOCK, f"the sparse map of {_show(member.name)}")
                    consumed += BLOCK
                    pending += block
                line, pending = pending.split(b"\n", 1)
                if not line.isdigit():
                    raise _refuse(member.name, "bad GNU sparse map")
                yield int(line)

        values = numbers()
        count = next(values)
        member.sparse = [(next(values), next(values)) for _ in range(count)]
        member.size -= consumed

    def data(self, member: _Member) -> Iterator[memoryview]:
        """The member's stored data, in chunks; consumes exactly ``member.size`` bytes."""
        left = member.size
        what = f"entry {_show(member.name)}"
        while left:
            avail = len(self._buf) - self._pos
            if avail:
                take = min(avail, left)
                view = memoryview(self._buf)[self._pos : self._pos + take]
                self._pos += take
            else:
                chunk = self._stream.read(min(left, _CHUNK))
                if not chunk:
                    raise self._truncated(what, member.size, member.size - left)
                take = len(chunk)
                view = memoryview(chunk)
            self._offset += take
            left -= take
            self._pending -= take
            yield view

    def drain(self) -> None:
        """Read the stream to its end (trailing zero blocks and record padding)."""
        self._buf = b""
        self._pos = 0
        while self._stream.read(_CHUNK):
            pass


def _cstr(field: bytes) -> bytes:
    return field.partition(b"\x00")[0]


def _number(field: bytes, at: int) -> int:
    if field[0] & 0x80:  # GNU base-256: two's complement, marker bit on positives
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.partition(b"\x00")[0]
    try:
        return int(text, 8)  # int() itself ignores the spaces some writers pad with
    except ValueError:
        if not text.strip(b" "):
            return 0
        raise SouteError(f"layer tar has a bad numeric field {field!r} at offset {at}") from None


def _verify_checksum(block: bytes, at: int, first: bool) -> None:
    try:
        want = _number(block[148:156], at) if block[148:156].strip(b" \x00") else -1
    except SouteError:
        want = -1  # not even a number: reported as a bad checksum below
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20  # the field counts as spaces
    if want == unsigned:
        return
    # Some old writers summed signed chars.
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    if want == signed:
        return
    hint = _compressed_hint(block) if first else None
    raise SouteError(f"layer tar has a bad header checksum at offset {at}", hint=hint)


def _compressed_hint(first_bytes: bytes) -> str | None:
    from soute.layer.compress import detect

    kind = detect(first_bytes)
    if kind == "tar":
        return None
    return f"the stream is {kind}-compressed: open it with soute.layer.open_decompressed"


def _parse_pax(data: bytes, pax: dict[bytes, bytes], sparse00: list[int], at: int) -> None:
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        length_text = data[pos:space]
        if space < 0 or not length_text.isdigit():
            raise SouteError(f"layer tar has a malformed PAX record at offset {at}")
        end = pos + int(length_text)
        record = data[space + 1 : end]
        if end <= space or end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise SouteError(f"layer tar has a malformed PAX record at offset {at}")
        key, value = record[:-1].split(b"=", 1)
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            # Sparse 0.0 repeats these keys, so they are kept in order rather than in the dict.
            sparse00.append(_decimal(value, at))
        else:
            pax[key] = value
        pos = end


def _decimal(value: bytes, at: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise SouteError(f"layer tar has a bad PAX number {value!r} at offset {at}") from None


def _pax_time_ns(value: bytes, at: int) -> int:
    text = value.decode("ascii", "replace")
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise SouteError(f"layer tar has a bad PAX time {value!r} at offset {at}")
    ns = int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])
    return -ns if negative else ns


def _fold_pax(member: _Member, pax: dict[bytes, bytes], sparse00: list[int], at: int) -> None:
    if not pax and not sparse00:
        return
    if b"path" in pax:
        member.name = pax[b"path"]
    if b"linkpath" in pax:
        member.linkname = pax[b"linkpath"]
    if b"size" in pax:
        member.size = _decimal(pax[b"size"], at)
    if b"uid" in pax:
        member.uid = _decimal(pax[b"uid"], at)
    if b"gid" in pax:
        member.gid = _decimal(pax[b"gid"], at)
    if b"mtime" in pax:
        member.mtime_ns = _pax_time_ns(pax[b"mtime"], at)
    for key, value in pax.items():
        if key.startswith(b"SCHILY.xattr."):
            member.xattrs[key[13:]] = value
        elif key.startswith(b"LIBARCHIVE.xattr."):
            # bsdtar: %-escaped name, base64 value; SCHILY wins when both are present.
            xname = urllib.parse.unquote_to_bytes(key[17:])
            if xname not in member.xattrs:
                try:
                    member.xattrs[xname] = base64.b64decode(value + b"=" * (-len(value) % 4))
                except ValueError:
                    raise _refuse(member.name, "bad LIBARCHIVE.xattr value") from None
    # GNU sparse files in PAX form.
    if b"GNU.sparse.name" in pax:
        member.name = pax[b"GNU.sparse.name"]
    real = pax.get(b"GNU.sparse.realsize") or pax.get(b"GNU.sparse.size")
    if real is not None:
        member.real_size = _decimal(real, at)
        if pax.get(b"GNU.sparse.major") == b"1":
            member.sparse_map_in_data = True
        elif b"GNU.sparse.map" in pax:
            text = pax[b"GNU.sparse.map"]
            nums = [_decimal(v, at) for v in text.split(b",")] if text else []
            if len(nums) % 2:
                raise _refuse(member.name, "bad GNU sparse map")
            member.sparse = list(zip(nums[::2], nums[1::2], strict=True))
        else:
            if len(sparse00) % 2:
                raise _refuse(member.name, "bad GNU sparse map")
            member.sparse = list(zip(sparse00[::2], sparse00[1::2], strict=True))


# --- applying -------------------------------------------------------------------------------


class _Applier:
    def __init__(self, dest: Path, *, overlay: bool, chroot: bool = False) -> None:
        self._chroot = chroot
        root = os.path.realpath(dest)
        if not os.path.isdir(root):
            raise SouteError(f"cannot apply a layer to {dest}: not a directory")
        self._root = os.fsencode(root)
        self._overlay = overlay
        self._privileged = os.geteuid() == 0
        # Real (symlink-free) paths relative to the root that this layer wrote, with all their
        # ancestors: whiteouts never remove them, and hardlinks may only point at them.
        self._written: set[bytes] = set()
        # Entry directory (as named in the tar) -> real directory; cleared when a directory or
        # symlink is removed, as that may change how names resolve.
        self._dirs: dict[bytes, bytes] = {b"": b""}
        # Directory metadata applied at the end: real path -> (mode, mtime_ns).
        self._dir_meta: dict[bytes, tuple[int, int]] = {}
        # Directories that were there before and whose content we change, with their times
        # (atime, mtime) then: a directory the layer does not name keeps its metadata.
        self._touched: dict[bytes, tuple[int, int]] = {}
        self._made: set[bytes] = set()  # directories this layer created
        self._opaque_xattr = OPAQUE_XATTRS[0]
        self._warned_chown = False

    def _abs(self, rel: bytes) -> bytes:
        return self._root + b"/" + rel if rel else self._root

    # -- names and resolution

    @staticmethod
    def _components(name: bytes, entry: bytes) -> list[bytes]:
        parts: list[bytes] = []
        for comp in name.split(b"/"):
            if comp in (b"", b"."):
                continue
            if comp == b"..":
                if not parts:
                    raise _refuse(entry, "its path leaves the destination")
                parts.pop()
            else:
                parts.append(comp)
        return parts

    def _resolve_dir(
        self, parts: list[bytes], entry: bytes, *, create: bool, strict: bool = True
    ) -> bytes | None:
        """The real path (relative to the root) of directory ``parts``, resolved in the root.

        Missing directories are created (mode 0755) when ``create``; otherwise None. A
        non-directory in the way is an error when ``strict``, else None.
        """
        key = b"/".join(parts)
        hit = self._dirs.get(key)
        if hit is not None:
            return hit
        # Start from the longest prefix already resolved.
        start = len(parts) - 1
        while start > 0 and b"/".join(parts[:start]) not in self._dirs:
            start -= 1
        base = self._dirs[b"/".join(parts[:start])]
        real = self._walk(base, parts[start:], entry, create=create, strict=strict)
        if real is not None:
            self._dirs[key] = real
        return real

    def _walk(
        self, base: bytes, comps: list[bytes], entry: bytes, *, create: bool, strict: bool
    ) -> bytes | None:
        stack = base.split(b"/") if base else []
        todo = comps[::-1]
        hops = 0
        while todo:
            comp = todo.pop()
            if comp in (b"", b"."):
                continue
            if comp == b"..":
                if not stack:
                    if self._chroot:
                        continue  # the root's parent is the root
                    raise _refuse(entry, "a symlink on its path leads outside the destination")
                stack.pop()
                continue
            rel = b"/".join([*stack, comp])
            path = self._abs(rel)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return None
                self._will_change(b"/".join(stack))
                os.mkdir(path, 0o755)
                self._made.add(rel)
                os.chmod(path, 0o755)  # whatever the umask
                self._mark_written(rel)
                stack.append(comp)
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(comp)
            elif stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise _refuse(entry, "too many levels of symbolic links on its path")
                target = os.readlink(path)
                if target.startswith(b"/"):
                    stack = []  # absolute targets mean the image root, i.e. dest
                todo.extend(target.split(b"/")[::-1])
            elif strict:
                raise _refuse(entry, f"{_show(rel)} on its path is not a directory")
            else:
                return None
        return b"/".join(stack)

    def _mark_written(self, rel: bytes) -> None:
        written = self._written
        while rel and rel not in written:
            written.add(rel)
            cut = rel.rfind(b"/")
            rel = rel[:cut] if cut >= 0 else b""

    def _will_change(self, dir_rel: bytes) -> None:
        if dir_rel not in self._touched and dir_rel not in self._made:
            st = os.lstat(self._abs(dir_rel))
            self._touched[dir_rel] = (st.st_atime_ns, st.st_mtime_ns)

    def _remove(self, rel: bytes, st: os.stat_result) -> None:
        path = self._abs(rel)
        self._will_change(_parent(rel))
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # fd-based on Linux: never follows symlinks inside
        else:
            os.unlink(path)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self._dirs = {b"": b""}
        self._dir_meta.pop(rel, None)
        if stat.S_ISDIR(st.st_mode) and rel in self._written:
            prefix = rel + b"/"
            for key in [k for k in self._dir_meta if k.startswith(prefix)]:
                del self._dir_meta[key]

    def _prune(self, rel: bytes) -> None:
        """Remove what lower layers put at ``rel``, keeping what this layer wrote."""
        todo = [rel]
        while todo:
            current = todo.pop()
            try:
                st = os.lstat(self._abs(current))
            except FileNotFoundError:
                continue
            if current not in self._written:
                self._remove(current, st)
            elif stat.S_ISDIR(st.st_mode):
                todo.extend(current + b"/" + child for child in os.listdir(self._abs(current)))

    # -- entries

    def apply(self, m: _Member, reader: _TarReader) -> None:
        if b"\x00" in m.name or b"\x00" in m.linkname:
            raise _refuse(m.name, "NUL byte in a name")  # only PAX records can carry one
        parts = self._components(m.name, m.name)
        if not parts:
            return  # the root itself: docker skips it too
        last_index = len(parts) - 1
        for i, comp in enumerate(parts):
            if comp.startswith(_AUFS_META) and not (i == last_index and comp == OPAQUE_MARKER):
                log.debug("skipping AUFS metadata entry %s", _show(m.name))
                return
        for comp in parts[:-1]:
            if comp.startswith(WHITEOUT_PREFIX):
                raise _refuse(m.name, "a whiteout name is used as a directory")
        last = parts[-1]
        if last == OPAQUE_MARKER:
            self._opaque(parts[:-1], m)
        elif last.startswith(WHITEOUT_PREFIX):
            hidden = last[len(WHITEOUT_PREFIX) :]
            if hidden in (b"", b".", b".."):
                raise _refuse(m.name, "malformed whiteout name")
            self._whiteout(parts[:-1], hidden, m)
        else:
            self._create(parts, m, reader)

    def _opaque(self, dir_parts: list[bytes], m: _Member) -> None:
        # On a full tree a missing directory, or a lower non-directory, has nothing to hide.
        real = self._resolve_dir(dir_parts, m.name, create=self._overlay, strict=self._overlay)
        if real is None:
            return
        if self._overlay:
            self._set_opaque(self._abs(real))
            return
        path = self._abs(real)
        for child in os.listdir(path):
            self._prune(real + b"/" + child if real else child)

    def _set_opaque(self, path: bytes) -> None:
        try:
            os.setxattr(path, self._opaque_xattr, b"y", follow_symlinks=False)
        except PermissionError:
            if self._opaque_xattr != OPAQUE_XATTRS[0]:
                raise
            # Rootless overlayfs (mounted with userxattr) reads the user.* namespace instead.
            self._opaque_xattr = OPAQUE_XATTRS[1]
            os.setxattr(path, self._opaque_xattr, b"y", follow_symlinks=False)

    def _whiteout(self, dir_parts: list[bytes], hidden: bytes, m: _Member) -> None:
        parent = self._resolve_dir(dir_parts, m.name, create=self._overlay, strict=self._overlay)
        if parent is None:
            return
        rel = parent + b"/" + hidden if parent else hidden
        if not self._overlay:
            self._prune(rel)
            return
        path = self._abs(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if rel in self._written:
                return  # this layer's own entry: the whiteout only hides lower ones
            self._remove(rel, st)
        self._will_change(parent)
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        self._chown(path, m, follow=False)

    def _create(self, parts: list[bytes], m: _Member, reader: _TarReader) -> None:
        kind = m.type
        if kind not in _CREATABLE:
            log.warning("skipping %s: unsupported tar entry type %r", _show(m.name), kind)
            return
        if kind in (b"3", b"4") and not self._privileged:
            log.warning("skipping device %s: creating devices needs root", _show(m.name))
            return
        parent = self._resolve_dir(parts[:-1], m.name, create=True)
        assert parent is not None
        rel = parent + b"/" + parts[-1] if parent else parts[-1]
        path = self._abs(rel)
        link_target = self._link_target(m, rel) if kind == b"1" else b""
        self._will_change(parent)
        merged = False
        # Create first and look only when something is in the way: on an empty destination
        # (the common case) that saves an lstat per entry. O_EXCL, mkdir, symlink, mknod and
        # link never follow a symlink in the last component.
        try:
            fd = self._make(path, m, link_target)
        except FileExistsError:
            st = os.lstat(path)
            if kind in _DIR_TYPES and stat.S_ISDIR(st.st_mode):
                fd, merged = -1, True  # dir over dir: only the metadata changes
            else:
                self._remove(rel, st)
                fd = self._make(path, m, link_target)
        if kind in _DIR_TYPES:
            if not merged:
                self._made.add(rel)
            self._chown(path, m, follow=False)
            self._set_xattrs(path, m, replace=merged)
            self._dir_meta[rel] = (m.mode, m.mtime_ns)
        elif fd >= 0:
            try:
                self._fill(fd, m, reader)
                self._chown(fd, m, follow=True)
                self._set_xattrs(fd, m)
                os.fchmod(fd, m.mode)  # after chown, which clears setuid/setgid
                os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
            finally:
                os.close(fd)
        elif kind == b"2":
            self._chown(path, m, follow=False)
            self._set_xattrs(path, m)
            os.utime(path, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)
        elif kind != b"1":  # a hardlink shares its target's inode, owner, mode and times
            self._chown(path, m, follow=False)
            self._set_xattrs(path, m)
            os.chmod(path, m.mode)  # the node was just created here: no symlink to follow
            os.utime(path, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)
        self._mark_written(rel)

    @staticmethod
    def _make(path: bytes, m: _Member, link_target: bytes) -> int:
        """Create the node for ``m``; an open fd for regular files, else -1."""
        kind = m.type
        if kind in _DIR_TYPES:
            os.mkdir(path, 0o700)
        elif kind == b"2":
            os.symlink(m.linkname, path)
        elif kind == b"1":
            os.link(link_target, path, follow_symlinks=False)
        elif kind == b"6":
            os.mkfifo(path, 0o600)
        elif kind in (b"3", b"4"):
            fmt = stat.S_IFCHR if kind == b"3" else stat.S_IFBLK
            os.mknod(path, fmt | 0o600, os.makedev(m.devmajor, m.devminor))
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(path, flags, 0o600)
        return -1

    def _link_target(self, m: _Member, rel: bytes) -> bytes:
        parts = self._components(m.linkname, m.name)
        if not parts:
            raise _refuse(m.name, "hardlink to the root directory")
        parent = self._resolve_dir(parts[:-1], m.name, create=False, strict=False)
        target = (parent + b"/" + parts[-1] if parent else parts[-1]) if parent is not None else b""
        if parent is None or target not in self._written:
            raise _refuse(
                m.name, f"hardlink target {_show(m.linkname)} is not an earlier entry of the layer"
            )
        if target == rel:
            raise _refuse(m.name, "hardlink to itself")
        path = self._abs(target)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise _refuse(m.name, f"hardlink target {_show(m.linkname)} is a directory")
        return path

    def _fill(self, fd: int, m: _Member, reader: _TarReader) -> None:
        if m.sparse is None:
            for chunk in reader.data(m):
                _write_all(fd, chunk)
        else:
            self._write_sparse(fd, m, reader)

    def _write_sparse(self, fd: int, m: _Member, reader: _TarReader) -> None:
        assert m.sparse is not None
        if sum(length for _, length in m.sparse) != m.size:
            raise _refuse(m.name, "GNU sparse map does not match the stored data")
        chunks = reader.data(m)
        end = 0
        carry = memoryview(b"")
        for offset, length in m.sparse:
            if offset < end or offset + length > m.real_size:
                raise _refuse(m.name, "GNU sparse map is out of order or out of bounds")
            os.lseek(fd, offset, os.SEEK_SET)
            end = offset + length
            while length:
                if not carry:
                    carry = next(chunks)
                take = carry[:length]
                _write_all(fd, take)
                carry = carry[len(take) :]
                length -= len(take)
        for _ in chunks:
            pass
        os.ftruncate(fd, m.real_size)

    def _chown(self, target: int | bytes, m: _Member, *, follow: bool) -> None:
        try:
            os.chown(target, m.uid, m.gid, follow_symlinks=follow)
        except PermissionError:
            if self._privileged:
                raise
            # Without root the tree keeps our ids; say so once rather than failing.
            if not self._warned_chown:
                log.warning("not running as root: file owners from the layer are not kept")
                self._warned_chown = True

    def _set_xattrs(self, target: int | bytes, m: _Member, *, replace: bool = False) -> None:
        follow = isinstance(target, int)
        if replace:
            # Dir over dir replaces the metadata: drop the kept-namespace xattrs it lacks.
            for name in os.listxattr(target, follow_symlinks=follow):
                if keep_xattr(name) and os.fsencode(name) not in m.xattrs:
                    os.removexattr(target, name, follow_symlinks=follow)
        for key, value in m.xattrs.items():
            name = os.fsdecode(key)
            if name.startswith(OVERLAY_XATTR_PREFIXES):
                continue  # never let a layer forge overlayfs state
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as err:
                if err.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                log.warning("skipping xattr %s on %s: %s", name, _show(m.name), err.strerror)

    def finish(self) -> None:
        todo: dict[bytes, tuple[int | None, int, int]] = {
            rel: (None, atime, mtime) for rel, (atime, mtime) in self._touched.items()
        }
        # Directories the layer needed but did not list get the Unix epoch rather than the time
        # of extraction, so the same archive always gives the same tree (and the same DiffID
        # when the tree is written again, as ``soute import`` does).
        todo.update((rel, (None, 0, 0)) for rel in self._made if rel not in self._dir_meta)
        todo.update((rel, (mode, mtime, mtime)) for rel, (mode, mtime) in self._dir_meta.items())
        # Deepest first, so a directory made read-only is not entered afterwards.
        for rel in sorted(todo, key=lambda r: r.count(b"/") + bool(r), reverse=True):
            mode, atime_ns, mtime_ns = todo[rel]
            parts = rel.split(b"/") if rel else []
            if self._resolve_dir(parts, rel, create=False, strict=False) != rel:
                continue  # replaced later in the layer
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self._abs(rel), flags)
            try:
                if mode is not None:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(atime_ns, mtime_ns))
            finally:
                os.close(fd)


def _parent(rel: bytes) -> bytes:
    cut = rel.rfind(b"/")
    return rel[:cut] if cut >= 0 else b""


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]
