"""Start-up checks run before anything serves (and before gunicorn forks its worker): the
settings, the model table and the preload names. A fault is one line naming what to fix."""

from __future__ import annotations

import sys

from .models_config import ConfigError, ModelSpec, build_table
from .settings import Settings


def check(config: dict | None = None) -> dict[str, ModelSpec]:
    """The validated table for these settings (MMSERVE_* environment, then `config`).

    Raises ValueError (ConfigError for the table) whose message names the setting, or the
    file, entry and field at fault.
    """
    settings = Settings.load(config)
    table = build_table(settings.models, settings.models_config, settings.replace_models)
    for name in settings.preload:
        if name not in table:
            raise ConfigError(
                f"setting 'preload': unknown model '{name}' (the models are: {', '.join(table)})"
            )
    return table


def check_or_exit(config: dict | None = None) -> None:
    """`check`, or print `mmserve: configuration error: ...` on stderr and exit with status 2."""
    try:
        check(config)
    except ValueError as exc:
        print(f"mmserve: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
