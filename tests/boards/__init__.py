"""Emulated edge boards for tests: file overlays, board tools, and a real sshd per board.

python -m tests.boards serve rpi4-4gb      # by hand; see __main__.py
from tests.boards.sshd import SshBoard     # in code; fixtures in tests.boards.fixtures
"""
