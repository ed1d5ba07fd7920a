"""Placeholder: this endpoint family is being built (see the issue tracker)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
