"""Registries over the OCI distribution API: credentials, auth, transport, push and pull.

- :mod:`.config`: which registries may use plain HTTP or skip TLS checks, mirrors of Docker
  Hub, where per-registry CA files live.
- :mod:`.credentials`: docker's ``config.json`` and the ``docker-credential-*`` helpers.
- :mod:`.auth`: ``WWW-Authenticate`` challenges, Basic, Bearer tokens cached per scope.
- :mod:`.client`: one registry's HTTP(S) connections, retries, redirects;
  :mod:`.errors`: what a registry refused, as one line.
- :mod:`.push` and :mod:`.pull`: images between the store and a registry;
  :func:`.pull.ensure_image` is the local image or a pulled one.
- :mod:`.locations`: where compressed forms of our layers are known to be (for mounts).
- :mod:`.progress`: docker's plain progress lines.
"""
