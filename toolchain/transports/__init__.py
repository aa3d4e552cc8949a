"""How to reach a target. Stages only ever use the `Transport` base class."""

from toolchain.transports.base import Capabilities, CommandResult, ProgressFn, Transport

__all__ = ["Capabilities", "CommandResult", "ProgressFn", "Transport"]
