"""Kaltura sessions (KS v1) and the partners file that maps them onto
mediajobs API keys.

A KS v1 is `base64(<sha1 hex of secret + info>|<info>)` with info
`partnerId;partnerId;expiry;type;rand;userId;privileges[;...]`: the client
signs it locally with the partner's admin secret (`generateSession`), so
whoever checks it must know that secret. The gateway holds no store, so the
secrets come from a file named by the environment variable
MEDIAJOBS_KALTURA_PARTNERS:

    {"101": {"secret": "<admin secret, at least 16 characters>",
             "api_key": "mjk_...",            # the key ADMIN sessions (type 2) call with
             "user_api_key": "mjk_..."},      # optional: the key USER sessions (type 0) call with
     "102": {"api_key": "mjk_..."}}           # no secret: the admin secret IS the key text

The file is read again whenever it changes (a new partner or a rotated key
needs no restart); an unreadable or invalid file refuses every call
(fail closed) and is logged. Without the variable the gateway checks no KS
and forwards no key: that is for a server run with `--auth none`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import random
import re
import stat
import threading
import time
from dataclasses import dataclass

from .wire import KalturaError

log = logging.getLogger("mediajobs.gateway.kaltura")

PARTNERS_ENV = "MEDIAJOBS_KALTURA_PARTNERS"
MAX_KS_CHARS = 4096
MAX_PARTNERS_FILE_BYTES = 1024 * 1024
MIN_SECRET_CHARS = 16
KEY_RE = re.compile(r"^mjk_[0-9a-z]{26}_[A-Za-z0-9_-]{16,128}$")
SESSION_USER = 0
SESSION_ADMIN = 2

# Kaltura's ks error numbers (INVALID_KS's "Error" argument).
KS_INVALID_STR = (-1, "INVALID_STR")
KS_INVALID_PARTNER = (-2, "INVALID_PARTNER")
KS_INVALID_TYPE = (-4, "INVALID_TYPE")
KS_EXPIRED = (-5, "EXPIRED")
# Privileges that narrow what a KS may do; this gateway does not enforce
# them, so a KS carrying one is refused rather than honoured more widely.
UNENFORCED_PRIVILEGES = ("iprestrict", "urirestrict", "actionslimit", "setrole")


@dataclass(frozen=True)
class Partner:
    partner_id: int
    secret: str
    api_key: str
    user_api_key: str = ""


@dataclass(frozen=True)
class Session:
    """A checked KS: who the call is, and the mediajobs key it runs with."""
    partner_id: int
    user_id: str
    session_type: int
    api_key: str


def invalid_ks(ks: str, error: tuple[int, str], why: str) -> KalturaError:
    shown = ks[:12] + "..." if len(ks) > 12 else ks
    return KalturaError("INVALID_KS", f'Invalid KS "{shown}", Error "{error[0]},{error[1]}": {why}')


def parse_partners(text: str) -> dict[int, Partner]:
    """The partners file's content; ValueError says what is wrong."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError('the file must be a JSON object {"<partnerId>": {"api_key": ..., "secret": ...}}')
    out: dict[int, Partner] = {}
    for pid_text, entry in raw.items():
        if not re.fullmatch(r"[1-9][0-9]{0,9}", str(pid_text)) or int(pid_text) > 2**31 - 1:
            raise ValueError(f"partner id {str(pid_text)[:20]!r} is not a positive integer")
        if not isinstance(entry, dict):
            raise ValueError(f"partner {pid_text}: must be an object with api_key and optionally secret")
        unknown = set(entry) - {"secret", "api_key", "user_api_key", "name"}
        if unknown:
            raise ValueError(f"partner {pid_text}: unknown fields {sorted(unknown)}")
        api_key = entry.get("api_key")
        if not isinstance(api_key, str) or not KEY_RE.match(api_key):
            raise ValueError(f"partner {pid_text}: api_key must be a mediajobs API key (mjk_...)")
        user_key = entry.get("user_api_key", "")
        if not isinstance(user_key, str) or (user_key and not KEY_RE.match(user_key)):
            raise ValueError(f"partner {pid_text}: user_api_key must be a mediajobs API key (mjk_...)")
        secret = entry.get("secret", api_key)
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS or len(secret) > 1024:
            raise ValueError(f"partner {pid_text}: secret must be {MIN_SECRET_CHARS}-1024 characters")
        out[int(pid_text)] = Partner(int(pid_text), secret, api_key, user_key)
    return out


class Partners:
    """The partners file, read again when it changes (size, mtime or inode)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._partners: dict[int, Partner] | None = None
        self._error = "not read yet"

    def get(self, partner_id: int) -> Partner | None:
        self._refresh()
        if self._partners is None:
            raise KalturaError("INTERNAL_SERVERL_ERROR",
                               f"the gateway's Kaltura partners file cannot be used ({self._error}); "
                               "every call is refused until it is fixed")
        return self._partners.get(partner_id)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            self._fail(f"{self.path}: {e.strerror}")
            return
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return
        with self._lock:
            if signature == self._signature:
                return
            try:
                if st.st_size > MAX_PARTNERS_FILE_BYTES:
                    raise ValueError(f"larger than {MAX_PARTNERS_FILE_BYTES} bytes")
                with open(self.path, encoding="utf-8") as f:
                    partners = parse_partners(f.read(MAX_PARTNERS_FILE_BYTES + 1))
            except (OSError, ValueError, UnicodeDecodeError) as e:
                self._signature = signature
                self._fail(f"{self.path}: {e}")
                return
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("%s holds secrets but others may read it (mode %o): chmod 600 it", self.path,
                            stat.S_IMODE(st.st_mode))
            self._partners, self._signature, self._error = partners, signature, ""
            log.info("Kaltura partners loaded from %s: %d partner(s)", self.path, len(partners))

    def _fail(self, why: str) -> None:
        """A file that cannot be read: keep the last good partners (a bad
        edit must not lock everyone out), or refuse all if there are none."""
        if why != self._error:
            log.error("Kaltura partners file: %s%s", why,
                      "; keeping the partners read before" if self._partners is not None else "")
        self._error = why


def sign(secret: str, info: bytes) -> bytes:
    return hashlib.sha1(secret.encode() + info).hexdigest().encode()


def generate(secret: str, partner_id: int, session_type: int, user_id: str, expiry_s: int,
             privileges: str = "") -> str:
    """A KS v1, exactly as KalturaClient.generateSession makes it."""
    info = ";".join([str(partner_id), str(partner_id), str(int(time.time()) + expiry_s), str(session_type),
                     str(random.randint(0, 0x10000)), user_id, privileges]).encode()
    return base64.b64encode(sign(secret, info) + b"|" + info).decode()


@dataclass(frozen=True)
class KsFields:
    partner_id: int
    expiry: int
    session_type: int
    user_id: str
    privileges: str
    signature: bytes
    info: bytes


def decode(ks: str) -> KsFields:
    """The fields of a KS v1 (not yet checked); INVALID_KS when it is not one."""
    if len(ks) > MAX_KS_CHARS:
        raise invalid_ks(ks, KS_INVALID_STR, f"longer than {MAX_KS_CHARS} characters")
    try:
        raw = base64.b64decode(ks.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_ks(ks, KS_INVALID_STR, "not base64") from None
    if raw.startswith(b"v2|"):
        raise invalid_ks(ks, KS_INVALID_STR, "KS v2 is not supported here: make the KS with generateSession "
                                             "(v1) or session.start")
    signature, sep, info = raw.partition(b"|")
    parts = info.split(b";")
    if not sep or len(parts) < 4 or len(signature) != 40:
        raise invalid_ks(ks, KS_INVALID_STR, "not a KS v1 (signature|partnerId;partnerId;expiry;type;...)")
    try:
        fields = [p.decode() for p in parts]
        partner_id, expiry, session_type = int(fields[0]), int(fields[2]), int(fields[3])
    except (UnicodeDecodeError, ValueError):
        raise invalid_ks(ks, KS_INVALID_STR, "partner id, expiry and type must be numbers") from None
    return KsFields(partner_id, expiry, session_type, fields[5] if len(fields) > 5 else "",
                    fields[6] if len(fields) > 6 else "", signature, info)


def check(ks: str, request_partner_id: int | None, partners: Partners) -> Session:
    """The session a KS opens: signed with its partner's secret, not expired,
    of the partner the request names (if it names one). Kaltura's INVALID_KS
    otherwise."""
    f = decode(ks)
    partner = partners.get(f.partner_id)
    if partner is None:
        raise invalid_ks(ks, KS_INVALID_PARTNER, f"partner {f.partner_id} is not known to this gateway")
    if not hmac.compare_digest(sign(partner.secret, f.info), f.signature.lower()):
        raise invalid_ks(ks, KS_INVALID_STR, "the signature does not match the partner's secret")
    if f.expiry <= time.time():
        raise invalid_ks(ks, KS_EXPIRED, "the session has expired: make a new KS")
    narrowing = [p for p in UNENFORCED_PRIVILEGES
                 if any(part.split(":", 1)[0].strip().lower() == p for part in f.privileges.split(","))]
    if narrowing:
        raise KalturaError("SERVICE_FORBIDDEN", f"the KS has the privilege {narrowing[0]}, which this gateway does "
                                                "not enforce: make a KS without it")
    if request_partner_id is not None and request_partner_id != f.partner_id:
        raise invalid_ks(ks, KS_INVALID_PARTNER, f"the KS is of partner {f.partner_id}, the request names "
                                                 f"partner {request_partner_id}")
    if f.session_type >= SESSION_ADMIN:
        return Session(f.partner_id, f.user_id, f.session_type, partner.api_key)
    if f.session_type == SESSION_USER and partner.user_api_key:
        return Session(f.partner_id, f.user_id, f.session_type, partner.user_api_key)
    if f.session_type == SESSION_USER:
        raise KalturaError("SERVICE_FORBIDDEN", "a USER session (type 0) may not call this gateway: partner "
                                                f"{f.partner_id} has no user_api_key; use an ADMIN session (type 2)")
    raise invalid_ks(ks, KS_INVALID_TYPE, f"unknown session type {f.session_type}")


def start_session(partners: Partners, secret: str, partner_id: int, session_type: int, user_id: str,
                  expiry_s: int, privileges: str) -> str:
    """Kaltura `session.start`: a KS for whoever knows the partner's secret."""
    partner = partners.get(partner_id)
    if partner is None or not hmac.compare_digest(partner.secret.encode(), secret.encode()):
        raise KalturaError("START_SESSION_ERROR", f"Error while starting session for partner [{partner_id}]")
    return generate(partner.secret, partner_id, session_type, user_id, expiry_s, privileges)
