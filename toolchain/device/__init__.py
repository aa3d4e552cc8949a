"""Code that runs ON the device, with the board's python (3.8 or newer, stdlib + llama_cpp only).

runner.py and events.py are copied into every bundle as they are; the probe snippets and
dry_load.py travel as `python -c SOURCE`, read here.
"""

from __future__ import annotations

import re
from importlib.resources import files


def device_source(name: str) -> str:
    """A device file's source without its comment and blank lines: they cost bytes on every call
    (a serial console sends them at 11 KB/s). So device files keep `#` out of line starts inside
    string literals."""
    code = files(__name__).joinpath(name).read_text()
    return "\n".join(line for line in code.splitlines() if line.strip() and not re.match(r"^\s*#", line))
