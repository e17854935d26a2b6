"""The backup file format refuses every kind of tampering."""

from __future__ import annotations

import io
import os

import pytest

from tools.backup import CHUNK, BackupError, decrypt_stream, encrypt_stream

KEY = os.urandom(32)


def _enc(data: bytes) -> bytes:
    out = io.BytesIO()
    assert encrypt_stream(KEY, io.BytesIO(data), out) == len(data)
    return out.getvalue()


def _dec(blob: bytes, key: bytes = KEY) -> bytes:
    return b"".join(decrypt_stream(key, io.BytesIO(blob)))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    assert _dec(_enc(data)) == data


def test_wrong_key_refused() -> None:
    with pytest.raises(BackupError, match="authenticate"):
        _dec(_enc(b"x" * 100), os.urandom(32))


def test_flipped_byte_refused() -> None:
    blob = bytearray(_enc(os.urandom(1000)))
    blob[40] ^= 1
    with pytest.raises(BackupError):
        _dec(bytes(blob))


def test_truncation_at_a_frame_boundary_refused() -> None:
    data = os.urandom(2 * CHUNK + 10)
    blob = _enc(data)
    first_frame_end = 5 + 16 + 4 + CHUNK + 16
    with pytest.raises(BackupError):
        _dec(blob[:first_frame_end])  # a clean cut after frame 0: not marked final


def test_reordered_frames_refused() -> None:
    data = os.urandom(3 * CHUNK)
    blob = _enc(data)
    head, frame = 21, 4 + CHUNK + 16
    f0, f1 = blob[head:head + frame], blob[head + frame:head + 2 * frame]
    swapped = blob[:head] + f1 + f0 + blob[head + 2 * frame:]
    with pytest.raises(BackupError):
        _dec(swapped)


def test_trailing_garbage_refused() -> None:
    with pytest.raises(BackupError, match="after the final"):
        _dec(_enc(b"abc") + b"junk")
