"""WeCom's callback encryption (企业微信 回调 加解密), with the `cryptography` package.

- ``msg_signature`` = SHA-1 hex of the sorted, concatenated token, timestamp, nonce and
  ciphertext (the ``echostr`` of a URL verification, the ``Encrypt`` of an event).
- The AES key is ``base64(EncodingAESKey + "=")`` (43 characters → 32 bytes); the cipher is
  AES-256-CBC with the key's first 16 bytes as IV, padded PKCS#7 to 32-byte blocks.
- The plaintext is 16 random bytes, the message's length as 4 bytes big-endian, the message,
  and the receiver id — the corp id, which must be the enterprise's.

`decrypt` raises `CryptoError` for every way a ciphertext can be wrong; `encrypt` is WeCom's
side, for the demo's sender (``pvgate wecom-send``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

AES_KEY_PATTERN = re.compile(r"[A-Za-z0-9]{43}")
BLOCK_BITS = 256  # WeCom pads to 32-byte blocks, not AES's 16
_LENGTH = struct.Struct(">I")
_RANDOM = 16


class CryptoError(ValueError):
    """A callback that does not authenticate or decrypt; the message says which step."""


def signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    """WeCom's ``msg_signature`` of a ciphertext."""
    joined = "".join(sorted((token, timestamp, nonce, encrypted)))
    return hashlib.sha1(joined.encode("utf-8")).hexdigest()


def check_signature(token: str, timestamp: str, nonce: str, encrypted: str, given: str) -> None:
    """Raise `CryptoError` unless ``given`` is the ciphertext's signature (constant time)."""
    expected = signature(token, timestamp, nonce, encrypted)
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise CryptoError("msg_signature does not match")


@dataclass(frozen=True, slots=True)
class AesKey:
    """The key and IV of an EncodingAESKey."""

    key: bytes
    iv: bytes

    @classmethod
    def from_encoding_key(cls, encoding_aes_key: str) -> AesKey:
        if not AES_KEY_PATTERN.fullmatch(encoding_aes_key):
            raise CryptoError("an EncodingAESKey is 43 letters and digits")
        key = base64.b64decode(encoding_aes_key + "=")
        return cls(key=key, iv=key[:16])


def decrypt(encoding_aes_key: str, encrypted: str, receiver_id: str) -> bytes:
    """The message inside ``encrypted``, if it was made for ``receiver_id`` (the corp id)."""
    aes = AesKey.from_encoding_key(encoding_aes_key)
    try:
        data = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("the ciphertext is not base64") from exc
    if not data or len(data) % 16:
        raise CryptoError("the ciphertext is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(aes.key), modes.CBC(aes.iv)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(BLOCK_BITS).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise CryptoError("the padding is not PKCS#7 (wrong key or tampered)") from exc
    if len(plain) < _RANDOM + _LENGTH.size:
        raise CryptoError("the plaintext is too short")
    (length,) = _LENGTH.unpack_from(plain, _RANDOM)
    start = _RANDOM + _LENGTH.size
    if start + length > len(plain):
        raise CryptoError("the message length runs past the plaintext")
    message, receiver = plain[start : start + length], plain[start + length :]
    if not hmac.compare_digest(receiver, receiver_id.encode("utf-8")):
        raise CryptoError("the message was not made for this corp id")
    return message


def encrypt(encoding_aes_key: str, message: bytes, receiver_id: str) -> str:
    """WeCom's side: ``message`` for ``receiver_id``, encrypted and base64-encoded."""
    aes = AesKey.from_encoding_key(encoding_aes_key)
    plain = os.urandom(_RANDOM) + _LENGTH.pack(len(message)) + message + receiver_id.encode()
    padder = padding.PKCS7(BLOCK_BITS).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes.key), modes.CBC(aes.iv)).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode("ascii")
