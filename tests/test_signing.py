"""The delivery signer computes the HMAC itself: it must stay byte-for-byte the standardwebhooks signature."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from service.config import new_webhook_secret
from service.signing import Signer, Verifier, secret_key

BODIES = [
    '{"id":"evt_1","object":"event","type":"video.completed","created_at":1700000000,"data":{}}',
    "",
    '{"text":"caf\u00e9 \u2603 \U0001f3ac"}',  # non-ASCII: signed as UTF-8, like the library
    '{"big":"' + "x" * 70_000 + '"}',
]
SECRETS = [
    new_webhook_secret(),
    "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
    base64.b64encode(secrets.token_bytes(32)).decode(),  # no prefix
    "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode().rstrip("="),  # unpadded
]


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("body", BODIES)
def test_sign_equals_the_library_and_verifies_with_it(secret: str, body: str) -> None:
    signer = Signer()
    timestamp = 1_700_000_123
    expected = standardwebhooks.Webhook(secret).sign(
        "msg_abc", datetime.fromtimestamp(timestamp, tz=UTC), body
    )
    for _ in range(2):  # the second call uses the cached keyed HMAC
        assert signer.sign("msg_abc", timestamp, body, secret) == expected
    headers = signer.headers("msg_abc", timestamp, body, [secret])
    assert headers["webhook-signature"] == expected
    if body.startswith("{"):  # the library's verify also parses the body as JSON
        # It checks the timestamp against now, so verify a fresh one.
        now = int(datetime.now(tz=UTC).timestamp())
        fresh = signer.headers("msg_now", now, body, [secret])
        standardwebhooks.Webhook(secret).verify(body.encode(), fresh)


def test_rotation_gives_one_entry_per_secret_each_verifying_alone() -> None:
    old, new = new_webhook_secret(), new_webhook_secret()
    now = int(datetime.now(tz=UTC).timestamp())
    body = '{"id":"evt_rot"}'
    headers = Signer().headers("msg_rot", now, body, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        standardwebhooks.Webhook(secret).verify(body.encode(), headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_webhook_secret()).verify(body.encode(), headers)


@given(
    key=st.binary(min_size=1, max_size=64),
    prefixed=st.booleans(),
    padded=st.booleans(),
)
def test_secret_key_signs_as_the_library_for_any_key(key: bytes, prefixed: bool, padded: bool) -> None:
    encoded = base64.b64encode(key).decode()
    secret = ("whsec_" if prefixed else "") + (encoded if padded else encoded.rstrip("="))
    assert secret_key(secret) == key
    timestamp = 1_700_000_123
    expected = standardwebhooks.Webhook(secret).sign(
        "msg_key", datetime.fromtimestamp(timestamp, tz=UTC), '{"a":1}'
    )
    assert Signer().sign("msg_key", timestamp, '{"a":1}', secret) == expected
    verdict = Verifier([secret], tolerance=300).verify(
        b'{"a":1}', "msg_key", str(timestamp), expected, now=timestamp
    )
    assert verdict.verdict == "ok"


@pytest.mark.parametrize("secret", ["whsec_", "", "whsec_=="])
def test_empty_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        secret_key(secret)
