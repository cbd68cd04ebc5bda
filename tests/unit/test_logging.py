import json
import logging

import pytest

from services.executor.secrets import load_credentials
from shared.config import ConfigError
from shared.logging import JsonFormatter, redact, register_secret


def _format(record_msg: str, **fields: object) -> dict[str, object]:
    logger = logging.getLogger("t")
    record = logger.makeRecord("t", logging.INFO, __file__, 1, record_msg, (), None,
                               extra={"tag": "BOOT", "fields": fields})
    return json.loads(JsonFormatter("executor").format(record))


def test_tag_is_in_message_and_field() -> None:
    line = _format("starting", port=1)
    assert line["msg"] == "[BOOT] starting" and line["tag"] == "BOOT" and line["port"] == 1


def test_credentials_never_reach_a_log_line() -> None:
    creds = load_credentials({"AURA_EXCHANGE_API_KEY": "live-key-123456", "AURA_EXCHANGE_API_SECRET": "s3cr3t-abcdef"})
    assert "s3cr3t" not in repr(creds)
    line = _format(f"connecting with {creds.api_key}", secret=creds.api_secret, api_key="whatever",
                   url=f"https://x/?key={creds.api_key}")
    text = json.dumps(line)
    assert "live-key-123456" not in text and "s3cr3t-abcdef" not in text
    assert line["secret"] == "***REDACTED***"


def test_redact_masks_nested_and_registered_values() -> None:
    register_secret("tok-9999")
    masked = redact({"a": ["x tok-9999 y"], "password": "p"})
    assert masked == {"a": ["x ***REDACTED*** y"], "password": "***REDACTED***"}


def test_live_mode_without_keys_is_a_named_config_error() -> None:
    with pytest.raises(ConfigError, match="AURA_EXCHANGE_API_KEY"):
        load_credentials({})
