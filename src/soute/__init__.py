"""soute: a daemonless container image builder and runtime.

The public API is imported lazily so that ``import soute`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"
