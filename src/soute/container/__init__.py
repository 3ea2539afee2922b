"""Containers: ``soute run`` and the lifecycle around it (above ``runtime`` and ``store``).

- :mod:`~soute.container.create`: an image and ``run``'s options become a record;
- :mod:`~soute.container.record`: the record on disk, its state, lookup by name or ID;
- :mod:`~soute.container.monitor`: the process that runs a container and writes its state;
- :mod:`~soute.container.control`: start, stop, kill, wait, rm, commit, export;
- :mod:`~soute.container.api`: run, exec, ps and inspect, as the CLI calls them;
- parts: :mod:`ports` (published ports), :mod:`network` (slirp4netns), :mod:`volumes`,
  :mod:`logs` (json-file), :mod:`health`, :mod:`top`, :mod:`attach` (streams and ttys).
"""
