"""Pseudonymous patient ids: a keyed hash (HMAC-SHA256, truncated) of the source's own id.

The same raw id, source and key always give the same pseudonym, so images of one patient stay
together across imports; without the key the raw id cannot be recovered or confirmed by
hashing guesses. The key is secret and local:

1. the ``key`` argument (bytes), when given;
2. else the file named by ``$CXR_PSEUDONYM_KEY_FILE``;
3. else ``~/.config/cxr-study/pseudonym.key``.

A missing key file is created on first use with 32 random bytes (hex, mode 0600). It must never
be committed or shared with the manifests: whoever holds it can test whether a given raw id is in
a manifest. Manifests record only :func:`key_fingerprint`, which tells whether two manifests were
made with the same key.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

KEY_ENV_VAR = "CXR_PSEUDONYM_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/cxr-study/pseudonym.key")
#: Hex characters kept from the HMAC digest (16 = 64 bits: collisions are negligible below
#: billions of patients).
DEFAULT_LENGTH = 16


def key_file_path(path: str | Path | None = None) -> Path:
    """Where the key lives: ``path``, else ``$CXR_PSEUDONYM_KEY_FILE``, else the default file."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(KEY_ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_KEY_FILE.expanduser()


def load_or_create_key(path: str | Path | None = None) -> bytes:
    """Read the pseudonymisation key, creating the key file (32 random bytes) if absent.

    Parameters
    ----------
    path : key file; default from :func:`key_file_path`.

    Returns
    -------
    The key as bytes (the file holds it as hex text).
    """
    path = key_file_path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes creating the key at once must not end up with different keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"pseudonym key file {path} does not hold a hex key") from None
    if len(key) < 16:
        raise ValueError(f"pseudonym key in {path} is too short ({len(key)} bytes, need >= 16)")
    return key


def resolve_key(key: bytes | str | Path | None = None) -> bytes:
    """``key`` as bytes: bytes are used as they are, a path is read, ``None`` loads the default."""
    if isinstance(key, bytes):
        if len(key) < 16:
            raise ValueError(f"pseudonym key is too short ({len(key)} bytes, need >= 16)")
        return key
    return load_or_create_key(key)


def key_fingerprint(key: bytes) -> str:
    """8 hex characters identifying ``key`` (safe to store beside a manifest)."""
    return hmac.new(key, b"cxr-study key fingerprint", hashlib.sha256).hexdigest()[:8]


def pseudonymize(raw_id: str, key: bytes, namespace: str, length: int = DEFAULT_LENGTH) -> str:
    """Pseudonym of one raw id: ``"<namespace>-<first `length` hex of HMAC(key, namespace:id)>"``.

    ``namespace`` (usually the source name) keeps equal raw ids of different sources apart.
    Leading and trailing blanks of ``raw_id`` are ignored.
    """
    raw = str(raw_id).strip()
    if not raw:
        raise ValueError("cannot pseudonymise an empty patient id")
    digest = hmac.new(key, f"{namespace}:{raw}".encode(), hashlib.sha256).hexdigest()
    return f"{namespace}-{digest[:length]}"


def pseudonymize_series(
    raw_ids: pd.Series | Iterable[str], key: bytes, namespace: str, length: int = DEFAULT_LENGTH
) -> pd.Series:
    """Pseudonyms of many raw ids (missing or blank ids stay missing), same index as the input."""
    series = raw_ids if isinstance(raw_ids, pd.Series) else pd.Series(list(raw_ids), dtype=object)
    cache: dict[str, str] = {}
    out = []
    for value in series:
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) \
                or not str(value).strip():
            out.append(pd.NA)
            continue
        text = str(value).strip()
        if text not in cache:
            cache[text] = pseudonymize(text, key, namespace, length)
        out.append(cache[text])
    return pd.Series(out, index=series.index, dtype=object)
