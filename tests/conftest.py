"""Shared test fixtures and paths."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
BUILDKIT_PARSER = CONFORMANCE / "buildkit" / "frontend" / "dockerfile" / "parser"
