"""WeCom's callback crypto (billing/wecom/crypto.py) against WeCom's own published sample,
against an independent implementation of WeCom's side (tests/admin_api/fake_wecom.py), and
against every way a ciphertext can be wrong; the XML parser refuses what it must."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from billing.wecom import crypto
from billing.wecom.messages import MessageError, envelope_ciphertext, parse_event, parse_xml
from tests.admin_api.fake_wecom import (
    SAMPLE_AES_KEY,
    SAMPLE_CORP_ID,
    SAMPLE_TOKEN,
    event_xml,
    wecom_encrypt,
    wecom_sign,
)

# 企业微信 加解密方案说明: the URL verification sample and the message sample.
VERIFY = {
    "msg_signature": "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
    "timestamp": "1409659589",
    "nonce": "263014780",
    "echostr": (
        "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
    ),
}
MESSAGE = {
    "msg_signature": "477715d11cdb4164915debcba66cb864d751f3e6",
    "timestamp": "1409659813",
    "nonce": "1372623149",
    "encrypt": (
        "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3Qczc"
        "dCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLj"
        "vd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMn"
        "vw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k"
        "22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2Yoy"
        "yH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
    ),
}


def test_wecoms_url_verification_sample():
    v = VERIFY
    assert (
        crypto.signature(SAMPLE_TOKEN, v["timestamp"], v["nonce"], v["echostr"])
        == (v["msg_signature"])
    )
    crypto.check_signature(
        SAMPLE_TOKEN, v["timestamp"], v["nonce"], v["echostr"], v["msg_signature"]
    )
    assert crypto.decrypt(SAMPLE_AES_KEY, v["echostr"], SAMPLE_CORP_ID) == b"1616140317555161061"


def test_wecoms_message_sample():
    m = MESSAGE
    crypto.check_signature(
        SAMPLE_TOKEN, m["timestamp"], m["nonce"], m["encrypt"], m["msg_signature"]
    )
    message = crypto.decrypt(SAMPLE_AES_KEY, m["encrypt"], SAMPLE_CORP_ID)
    event = parse_event(message)
    assert (event.msg_type, event.key) == ("text", "id:4561255354251345929")
    assert event.fields["Content"] == "hello"
    assert event.userid is None


@given(
    st.binary(max_size=3000),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=32),
)
def test_what_wecom_encrypts_decrypts_and_back(message: bytes, corp_id: str):
    # WeCom's side as the tests implement it, pvgate's as billing implements it, both ways.
    assert (
        crypto.decrypt(SAMPLE_AES_KEY, wecom_encrypt(SAMPLE_AES_KEY, message, corp_id), corp_id)
        == message
    )
    assert (
        crypto.decrypt(SAMPLE_AES_KEY, crypto.encrypt(SAMPLE_AES_KEY, message, corp_id), corp_id)
        == message
    )
    sig = wecom_sign("tok", "1", "2", "abc")
    assert crypto.signature("tok", "1", "2", "abc") == sig


def _replace_block(encrypted: str, index: int) -> str:
    raw = bytearray(base64.b64decode(encrypted))
    raw[index] ^= 0x80
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda e: e[:-4], "blocks"),  # cut: base64 still, but not of whole blocks
        (lambda e: base64.b64encode(base64.b64decode(e)[:-8]).decode(), "blocks"),
        (lambda e: _replace_block(e, -17), "padding"),  # the last block's padding broken
        (lambda e: "not base64!", "base64"),
        (lambda e: e[:-1], "base64"),  # broken base64
    ],
)
def test_a_damaged_ciphertext_is_refused_saying_why(mutate, words: str):
    encrypted = wecom_encrypt(SAMPLE_AES_KEY, b"<xml/>", SAMPLE_CORP_ID)
    with pytest.raises(crypto.CryptoError, match=words):
        crypto.decrypt(SAMPLE_AES_KEY, mutate(encrypted), SAMPLE_CORP_ID)


def test_a_message_for_another_corp_or_under_another_key_is_refused():
    encrypted = wecom_encrypt(SAMPLE_AES_KEY, b"<xml/>", SAMPLE_CORP_ID)
    with pytest.raises(crypto.CryptoError, match="corp id"):
        crypto.decrypt(SAMPLE_AES_KEY, encrypted, "ww_other")
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt("B" * 43, encrypted, SAMPLE_CORP_ID)
    with pytest.raises(crypto.CryptoError, match="43"):
        crypto.decrypt("short", encrypted, SAMPLE_CORP_ID)
    with pytest.raises(crypto.CryptoError, match="msg_signature"):
        crypto.check_signature(SAMPLE_TOKEN, "1", "2", encrypted, "0" * 40)


def test_a_length_running_past_the_plaintext_is_refused():
    # 16 random bytes, then a length far longer than what follows (and a whole pad block).
    key = base64.b64decode(SAMPLE_AES_KEY + "=")
    plain = b"r" * 16 + (10_000).to_bytes(4, "big") + b"x" * 12 + bytes([32]) * 32
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    bad = base64.b64encode(enc.update(plain) + enc.finalize()).decode()
    with pytest.raises(crypto.CryptoError, match="length"):
        crypto.decrypt(SAMPLE_AES_KEY, bad, "")


@pytest.mark.parametrize(
    "body",
    [
        b'<!DOCTYPE xml [<!ENTITY lol "lol">]><xml><Encrypt>&lol;</Encrypt></xml>',
        b'<!doctype xml SYSTEM "file:///etc/passwd"><xml/>',
        b"<xml><Encrypt>",
        b"<other><Encrypt>x</Encrypt></other>",
        b"<xml><Encrypt>   </Encrypt></xml>",
    ],
)
def test_the_envelope_parser_refuses_dtds_and_what_is_not_an_envelope(body: bytes):
    with pytest.raises(MessageError):
        envelope_ciphertext(body)


def test_an_event_names_its_member_and_nested_elements_become_json():
    xml = event_xml(
        "change_external_chat",
        "update",
        userid=None,
        extra="<MemChangeList><Item>a</Item><Item>b</Item></MemChangeList>",
    )
    event = parse_event(xml)
    assert (event.event, event.change_type, event.userid) == (
        "change_external_chat",
        "update",
        None,
    )
    assert event.fields["MemChangeList"] == {"Item": ["a", "b"]}
    assert event.key.startswith("sha256:")
    assert parse_event(event_xml(userid="bob")).userid == "bob"
    assert parse_xml(b"<xml/>").tag == "xml"
