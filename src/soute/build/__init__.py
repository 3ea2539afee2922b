"""The build engine: stages to a graph, cache keys, instruction execution, progress."""
