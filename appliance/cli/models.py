"""Model store commands: pull, ls, verify, rm, import (filled in by the store work)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    return None
