"""Identifiers: the character sets of the names that travel from documents and boards into
launchers, settings, release ids and host paths, their validators, and the path helpers.

A value from a plan file, a lab file or a board is data: before it becomes part of a file name, a
path or a launcher it must match one of these sets (anything else is refused, exit 2, naming the
field), and every path built from a name is checked to stay inside its root.

    model id    [A-Za-z0-9][A-Za-z0-9._+-]{0,127}    smollm2-135m-instruct, qwen2.5-0.5b-instruct,
                                                     SmolLM2-135M-Instruct.Q4_K_M (a local GGUF's stem)
    quant       [A-Za-z0-9][A-Za-z0-9_]{0,31}        Q4_K_M, F16, BF16, IQ2_XXS, TQ1_0
    release id  [A-Za-z0-9][A-Za-z0-9._+-]{0,199}    20250101-120000-smollm2-135m-instruct-q8_0-1a2b3c4d
    slug        [A-Za-z0-9][A-Za-z0-9._+-]{0,127}    a lab board's name, a wheelhouse key (aarch64-glibc2.36-cp311-neon+asimd)

None of them can hold a path separator, whitespace, a quote, a shell or Python metacharacter, or
be `.` or `..` (the first character is a letter or a digit).
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from toolchain.core.errors import BadInputError

MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,31}")
RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")

_RULES = {
    "model id": (MODEL_ID, "letters, digits and . _ + -, starting with a letter or digit, at most 128"),
    "quant": (QUANT, "letters, digits and _, starting with a letter or digit, at most 32"),
    "release id": (RELEASE_ID, "letters, digits and . _ + -, starting with a letter or digit, at most 200"),
    "name": (SLUG, "letters, digits and . _ + -, starting with a letter or digit, at most 128"),
}
_NOT_SLUG = re.compile(r"[^A-Za-z0-9._+-]+")


def shown(value: object, limit: int = 60) -> str:
    """A value as an error message shows it: repr (so a newline stays one line), cut to `limit`."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def is_identifier(value: object, kind: str) -> bool:
    """Whether `value` is a str in the character set of `kind` (model id, quant, release id, name)."""
    return isinstance(value, str) and _RULES[kind][0].fullmatch(value) is not None


def check_identifier(value: object, kind: str, where: str, hint: str = "") -> str:
    """`value` if it is a `kind` identifier; else BadInputError naming `where` (file: field)."""
    if is_identifier(value, kind):
        return str(value)
    rule = _RULES[kind][1]
    what = f"not a string but {type(value).__name__}" if not isinstance(value, str) else "not a valid " + kind
    raise BadInputError(f"{where} is {shown(value)}: {what} ({rule} characters)", hint or f"a {kind} uses only {rule} characters")


def check_model_id(value: object, where: str) -> str:
    return check_identifier(value, "model id", where, "use a catalog id (edgedeploy models), e.g. smollm2-135m-instruct")


def check_quant(value: object, where: str) -> str:
    return check_identifier(value, "quant", where, "use a quant name such as Q4_K_M, Q8_0 or F16")


def check_release_id(value: object, where: str) -> str:
    return check_identifier(value, "release id", where, "release ids are made by edgedeploy: ship again, or pick one from edgedeploy status")


def check_slug(value: object, where: str, hint: str = "") -> str:
    return check_identifier(value, "name", where, hint or "use letters, digits, '.', '_', '+' and '-', e.g. pi5-a")


def slug(name: str, default: str = "x") -> str:
    """`name` made into a slug: each run of other characters becomes '-', leading '.', '_', '+' and
    '-' are dropped, cut to 128 characters; `default` when nothing is left. A slug is unchanged."""
    text = _NOT_SLUG.sub("-", name).lstrip("._+-")[:128] or default
    return text if SLUG.fullmatch(text) else default


def inside(root: Path | str, path: Path | str, where: str = "") -> Path:
    """`path` (absolute or relative to `root`) if it stays inside `root` once `..` and symbolic
    links are resolved; else BadInputError. Returns the path as given, joined to root when relative."""
    root_p = Path(root)
    full = root_p / path
    real_root, real = os.path.realpath(root_p), os.path.realpath(full)
    if os.path.commonpath([real_root, real]) != real_root:
        raise BadInputError(f"{where + ': ' if where else ''}{shown(str(path))} leads outside {root_p}",
                            "a name that becomes a path must be a plain name (no '/', no '..')")
    return full


def inside_posix(root: str, path: str, where: str = "") -> str:
    """The same check for a path on a target (POSIX text, no file system to ask): `..` and `.` are
    collapsed; the result must be `root` or below it. Returns the normalised path."""
    norm_root = posixpath.normpath(root)
    norm = posixpath.normpath(posixpath.join(root, path))
    if "\0" in norm or (norm != norm_root and not norm.startswith(norm_root.rstrip("/") + "/")):
        raise BadInputError(f"{where + ': ' if where else ''}{shown(path)} leads outside {root}",
                            "a name that becomes a path must be a plain name (no '/', no '..')")
    return norm
