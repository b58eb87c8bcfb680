"""One masking rule for database URLs (`db/engine.redact`): every credential form is hidden
wherever a URL is shown, and left out of what `init` writes."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from neruba_cli.db.engine import display_url, redact, redact_message, without_credentials

CASES = [
    # (as written, shown, written to a config file)
    (
        "postgresql://u:secret@host/db",
        "postgresql://u:***@host/db",
        "postgresql://u@host/db",
    ),
    (  # an unescaped @ in the password: the whole password is hidden, not just its head
        "postgresql://u:s3cr@t@host:5432/db",
        "postgresql://u:***@host:5432/db",
        "postgresql://u@host:5432/db",
    ),
    (
        "postgresql://u@host/db?password=hunter2&sslmode=require",
        "postgresql://u@host/db?password=***&sslmode=require",
        "postgresql://u@host/db?sslmode=require",
    ),
    (
        "mysql://u@h/db?passwd=a&pwd=b&sslpassword=c&token=d&charset=utf8mb4",
        "mysql://u@h/db?passwd=***&pwd=***&sslpassword=***&token=***&charset=utf8mb4",
        "mysql://u@h/db?charset=utf8mb4",
    ),
    (
        "postgresql://u:p/w:x@h/db?PASSWORD=y",
        "postgresql://u:***@h/db?PASSWORD=***",
        "postgresql://u@h/db",
    ),
    ("sqlite:////srv/a@b/neruba.db", "sqlite:////srv/a@b/neruba.db", None),
    (
        "sqlite:///./neruba.db?password=x",
        "sqlite:///./neruba.db?password=***",
        "sqlite:///./neruba.db",
    ),
    ("postgresql://u@host/db", "postgresql://u@host/db", None),
    ("not a url at all", "not a url at all", None),
]


@pytest.mark.parametrize(("written", "shown", "config"), CASES)
def test_every_credential_form_is_masked_and_left_out(
    written: str, shown: str, config: str | None
) -> None:
    assert redact(written) == shown
    assert without_credentials(written) == (config or written, config is not None)


def test_parsed_urls_and_the_displayed_form_use_the_same_rule() -> None:
    parsed = make_url("postgresql+psycopg://u:s3cr@t@host/db?password=hunter2")
    assert redact(parsed) == "postgresql+psycopg://u:***@host/db?password=***"
    assert display_url("postgresql+psycopg://u:pw@h/db?password=z") == (
        "postgresql://u:***@h/db?password=***"
    )


def test_a_drivers_message_loses_the_pieces_of_a_split_password() -> None:
    url = "postgresql://postgres:s3cr@t@127.0.0.1:5432/db?password=hunter2"
    message = "failed to resolve host 't@127.0.0.1': [Errno -2] (password hunter2, s3cr)"
    assert redact_message(message, url) == (
        "failed to resolve host '***@127.0.0.1': [Errno -2] (password ***, ***)"
    )
    assert redact_message("Access denied for user 'root'@'127.0.0.1'", url) == (
        "Access denied for user 'root'@'127.0.0.1'"
    )
