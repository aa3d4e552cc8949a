"""The `edgedeploy` command: parse options, call the library, render what it returns."""

from toolchain.cli.app import app, run

__all__ = ["app", "run"]
