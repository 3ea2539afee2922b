"""Running containers: the layer below ``build`` (RUN) and ``soute run``.

- :mod:`soute.runtime.spec`: what a run needs (:class:`Spec`, :class:`Process`, :class:`Mount`),
  user resolution and the OCI ``config.json`` form;
- :mod:`soute.runtime.rootfs`: the overlay root (:class:`Layers`) and mountpoint stubs;
- :mod:`soute.runtime.executor`: :func:`run`, with our own executor or runc/crun, and
  :func:`exec_in`, a process in a running container (``docker exec``).
"""

from __future__ import annotations

from soute.runtime.executor import exec_in, look_path, run
from soute.runtime.rootfs import Layers, remove_stubs
from soute.runtime.spec import (
    BUILD_HOSTNAME,
    BUILD_NAMESPACES,
    COPY_UP,
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    DEVICE,
    ExecUser,
    GeneratedFile,
    Mount,
    Process,
    Resources,
    Rlimit,
    Spec,
    default_files,
    default_mounts,
    resolve_user,
    to_oci_config,
)

__all__ = [
    "BUILD_HOSTNAME",
    "BUILD_NAMESPACES",
    "COPY_UP",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_PATH",
    "DEVICE",
    "ExecUser",
    "GeneratedFile",
    "Layers",
    "Mount",
    "Process",
    "Resources",
    "Rlimit",
    "Spec",
    "default_files",
    "default_mounts",
    "exec_in",
    "look_path",
    "remove_stubs",
    "resolve_user",
    "run",
    "to_oci_config",
]
