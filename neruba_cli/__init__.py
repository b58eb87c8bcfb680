"""Neruba: a usage, hybrid and prepaid billing engine driven by an operator CLI."""


def __getattr__(name: str) -> str:
    """`__version__`, read from the installed metadata only when asked for: importing
    importlib.metadata costs more than the rest of `neruba --help`."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neruba")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"
