"""Bundled data: targets/, profiles/ and templates/ (read them through toolchain.core.paths).

The three entries here are symlinks to the top-level directories of the repository, so the
checkout keeps one copy of each and an editable install reads them in place; a wheel build
follows the links and carries real copies (pyproject.toml: package-data of this package).
"""
