"""Exchange credentials: read here and only here, only by the executor, only in live mode.

Sources, first match wins: ``AURA_EXCHANGE_API_KEY`` + ``AURA_EXCHANGE_API_SECRET``, or a TOML file named by
``AURA_EXCHANGE_SECRETS_FILE`` holding ``api_key`` and ``api_secret``.  The values are registered with the
log redactor before anything else can print them, and ``__repr__`` never shows them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import ConfigError
from shared.logging import register_secret

# Every environment variable that carries or points at exchange credentials. Launchers hand these to the
# executor process only (aura/launcher.py; docker-compose.yml sets them on the executor service alone).
CREDENTIAL_ENV = ("AURA_EXCHANGE_API_KEY", "AURA_EXCHANGE_API_SECRET", "AURA_EXCHANGE_SECRETS_FILE")


@dataclass(frozen=True)
class ExchangeCredentials:
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)

    def __repr__(self) -> str:
        return "ExchangeCredentials(api_key=***, api_secret=***)"


def load_credentials(env: dict[str, str] | None = None) -> ExchangeCredentials:
    env = dict(os.environ if env is None else env)
    key, secret = env.get("AURA_EXCHANGE_API_KEY", ""), env.get("AURA_EXCHANGE_API_SECRET", "")
    path = env.get("AURA_EXCHANGE_SECRETS_FILE", "")
    if not (key and secret) and path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"setting exchange_secrets_file (env AURA_EXCHANGE_SECRETS_FILE): cannot read {path}: "
                              f"{type(exc).__name__}") from exc
        key, secret = str(data.get("api_key", "")), str(data.get("api_secret", ""))
    if not (key and secret):
        raise ConfigError("live trading (AURA_DRY_RUN=false) needs exchange keys: set AURA_EXCHANGE_API_KEY and "
                          "AURA_EXCHANGE_API_SECRET, or AURA_EXCHANGE_SECRETS_FILE")
    register_secret(key)
    register_secret(secret)
    return ExchangeCredentials(key, secret)
