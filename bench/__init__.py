"""The benchmark harness of issue #7: soute side by side with BuildKit, docker's legacy
builder, buildah, Charliecloud's ch-image and skopeo, on the same workloads in one run.

- :mod:`.cli`: the command line (``scripts/bench``) and the order of things;
- :mod:`.services`: the base tarball, a private dockerd, a local registry;
- :mod:`.tools`: soute and each peer behind one interface;
- :mod:`.contexts`: the build contexts;
- :mod:`.workloads`: the workloads, as cases;
- :mod:`.measure`: the runs (tools taking turns, a warm-up, medians);
- :mod:`.report`: the targets, ``RESULTS.md`` and ``results.json``;
- :mod:`.system`: running and timing commands, peak memory, the machine.
"""
