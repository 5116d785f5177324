"""Password hashes for convlens's simple password login (small teams).

A hash is ``pbkdf2_sha256$<iterations>$<salt>$<digest>`` (salt and digest URL-safe base64),
made with the standard library only. Put one per user in the config file::

    [auth]
    mode = "password"
    [auth.users]
    alice = "pbkdf2_sha256$600000$..."

Make a hash with ``python -m analysis.audit.passwords`` (asks for the password twice).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 600_000        # OWASP 2023 recommendation for PBKDF2-HMAC-SHA256


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """A ``pbkdf2_sha256$<iterations>$<salt>$<digest>`` hash of ``password`` for the config
    file (PBKDF2-HMAC-SHA256, salt and digest URL-safe base64 without padding).

    Args:
        password: the plain password (UTF-8 encoded before hashing).
        iterations: PBKDF2 iterations (default ``ITERATIONS``, the OWASP 2023 figure).
        salt: the salt bytes; None draws 16 random bytes (tests pass a fixed one).
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{ALGORITHM}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``; False for a wrong password or a malformed hash."""
    try:
        algorithm, iterations, salt, digest = encoded.split("$")
        if algorithm != ALGORITHM:
            return False
        expected = _unb64(digest)
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def check_login(users: dict[str, str] | tuple[tuple[str, str], ...], name: str, password: str) -> bool:
    """Constant work whether or not the user exists (no user enumeration by timing).

    Args:
        users: user name -> encoded hash (a dict, or the config's tuple of pairs).
        name: the user name typed at login.
        password: the password typed at login.
    """
    table = dict(users)
    encoded = table.get(name)
    if encoded is None:
        verify_password(password, _dummy())
        return False
    return verify_password(password, encoded)


@functools.cache
def _dummy() -> str:
    return hash_password("not a password", salt=b"\0" * 16)


def main() -> None:  # pragma: no cover - interactive
    """Command line (``python -m analysis.audit.passwords``): ask for a password twice (at least
    8 characters) and print its hash for the ``[auth.users]`` table.
    """
    import getpass
    import sys
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        sys.exit("The passwords differ.")
    if len(first) < 8:
        sys.exit("Use at least 8 characters.")
    print(hash_password(first))


if __name__ == "__main__":  # pragma: no cover
    main()
