"""A hospital datasite's secrets: its server uid, signing key and the logins it issues.

syft's `Server.named()` derives the signing key from the SHA-256 of the server name, so
anyone who knows a hospital's name could sign as its server, and syft's default root login
is public (info@openmined.org / changethis). A hospital here gets a random key and random
strong passwords instead, created once and kept in a 0600 file so a restart brings the
same datasite back with the same logins.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from datasites.contract.files import write_json

ADMIN_EMAIL_DOMAIN = "federation.org"
SCIENTIST_EMAIL = "scientist@research.org"


def strong_password() -> str:
    """A 192-bit random password, URL-safe so it survives JSON and shells unchanged."""
    return secrets.token_urlsafe(24)


def write_private_json(path: Path, payload: Any) -> None:
    """Write JSON readable by the owner only (0600 from the start), atomically, so a crash
    never leaves a half-written credentials file behind."""
    write_json(path, payload, mode=0o600)


@dataclass(frozen=True)
class Identity:
    """Who a datasite is and which logins it accepts."""

    server_uid: str
    signing_key: str
    admin_email: str
    admin_password: str
    scientist_email: str
    scientist_password: str
    # How many times `rotate-keys` replaced the key and passwords; files written before
    # rotation existed lack it and load as generation 0.
    keys_generation: int = 0
    # The secret key of the patients' train/test split (hex; see
    # synthetic.partition.split_train_test_patients). Files written before it existed get
    # one the first time they are loaded.
    split_key: str = ""

    @property
    def verify_key(self) -> str:
        """The datasite's Ed25519 verify key (hex): what syft's metadata shows, and what a
        secure study's plan names for this hospital (`datasites.site.partners`)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(self.signing_key))
        return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    @property
    def split_key_bytes(self) -> bytes:
        return bytes.fromhex(self.split_key)

    @classmethod
    def create(cls, hospital: str) -> Identity:
        from nacl.encoding import HexEncoder
        from nacl.signing import SigningKey

        return cls(
            server_uid=uuid.uuid4().hex,
            # syft's SyftSigningKey is this key, written as hex the same way.
            signing_key=SigningKey.generate().encode(encoder=HexEncoder).decode(),
            admin_email=f"admin@{hospital}.{ADMIN_EMAIL_DOMAIN}",
            admin_password=strong_password(),
            scientist_email=SCIENTIST_EMAIL,
            scientist_password=strong_password(),
            split_key=secrets.token_hex(32),
        )

    @classmethod
    def load_or_create(cls, path: Path, hospital: str) -> Identity:
        """Load the hospital's identity, creating it on first start."""
        if path.exists():
            identity = cls(**json.loads(path.read_text()))
            if not identity.split_key:  # written before the keyed split existed
                identity = replace(identity, split_key=secrets.token_hex(32))
                write_private_json(path, asdict(identity))
            return identity
        identity = cls.create(hospital)
        write_private_json(path, asdict(identity))
        return identity
