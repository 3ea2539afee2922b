"""From what users type (names, tags, digests, short IDs) to images in the store."""

from __future__ import annotations

from soute.store.store import Image, ImageNotFound

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs a `soute run` time
    from soute.store.store import Store


def familiar(full: str) -> str:
    """docker's short form of a fully qualified name: docker.io/library/debian -> debian
    (but docker.io/library/a/b stays library/a/b, which is another repository than a/b)."""
    from soute.image.reference import parse_reference

    return parse_reference(full).familiar()


def layout_ref_name(full: str) -> str:
    """The ``org.opencontainers.image.ref.name`` we give a tag: ``NAME:TAG`` as users type it,
    so ``skopeo inspect oci:$SOUTE_ROOT/oci:debian:bookworm`` works."""
    return familiar(full)


def full_tag(name: str) -> str:
    """A user's ``NAME[:TAG]`` as the fully qualified tag the store records."""
    from soute.image.reference import parse_reference

    ref = parse_reference(name)
    if ref.digest is not None:
        from soute.errors import SouteError

        raise SouteError(f"{name}: a tag cannot hold a digest", "give NAME[:TAG]")
    return str(ref.with_default_tag())


def lookup_tag(name: str) -> str | None:
    """The tag :func:`resolve` looks ``name`` up as first, or None (a digest, or no name)."""
    from soute.errors import SouteError
    from soute.image.reference import parse_reference

    try:
        ref = parse_reference(name)
    except SouteError:
        return None
    return None if ref.digest is not None else str(ref.with_default_tag())


def resolve(store: Store, name: str) -> Image:
    """docker's lookup: a tag, then NAME@DIGEST, then a full or unique short image ID."""
    from soute.errors import SouteError
    from soute.image.reference import parse_reference

    hex_part = name[7:] if name.startswith("sha256:") else name
    try:
        ref = parse_reference(name)
    except SouteError:
        ref = None
    if ref is not None:
        if ref.digest is not None:
            image_id = store.meta.repo_digest_target(ref.name, ref.digest)
            if image_id is None:
                # A manifest digest of our own store also names the image.
                image_id = next((r.id for r in store.meta.images() if r.manifest == ref.digest),
                                None)
            if image_id is not None:
                return store.image(image_id)
        else:
            image_id = store.meta.tag_target(str(ref.with_default_tag()))
            if image_id is not None:
                return store.image(image_id)
    if 0 < len(hex_part) <= 64 and all(c in "0123456789abcdef" for c in hex_part):
        matches = store.meta.images_by_prefix(hex_part)
        if len(matches) == 1:
            return store.image(matches[0])
        if len(matches) > 1:
            raise ImageNotFound(f"image ID prefix {name!r} is ambiguous",
                                "give more characters of the ID")
    if ref is None:
        raise SouteError(f"invalid reference format: {name!r}",
                         "names look like NAME[:TAG], NAME@sha256:..., or an image ID")
    raise ImageNotFound(f"No such image: {name}",
                        "see 'soute images'; 'soute bootstrap' or 'soute import' make bases")
