"""``edge-agent fleet init``: a fleet CA, TLS and per-identity credentials, least-privilege ACLs, and a
Mosquitto configuration that enforces them.

One identity per device and one for the operator. The identity is the MQTT username: on the TLS listener it
is the client certificate's CN (``use_identity_as_username``), on the optional password listener it is the
username checked against ``passwd``. The ACL file is written with ``%u`` patterns, so it does not change when
devices are added; the topic tree it grants is :mod:`edge_agent.protocol.topics`.

Output (all in ``out_dir``)::

    ca.crt ca.key                 fleet CA (EC P-256). ca.key signs identities: keep it offline after init
    server.crt server.key         broker certificate (SAN: host, 127.0.0.1, localhost)
    <name>.crt <name>.key         client certificate per device and for the operator (CN = name)
    <name>.cred                   JSON credentials for that identity (password, file paths, broker URL)
    passwd                        Mosquitto password file ($7$ PBKDF2-SHA512)
    crl.pem                       revoked client certificates (empty at first; see revoke_identity)
    acl                           Mosquitto ACL file
    mosquitto.conf                run with ``mosquitto -c <out_dir>/mosquitto.conf``
    data/                         Mosquitto persistence
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import pwd
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.protocol import topics
from edge_agent.protocol.errors import EdgeAgentError
from edge_agent.security.broker_config import (
    acl_text,
    check_stream_filter,
    hash_password,
    mosquitto_conf_text,
    passwd_text,
)

CA_DAYS = 3650
LEAF_DAYS = 825
# Mosquitto's own tool uses 101 iterations; the passwords here are random 192-bit strings, so the work
# factor only has to exist, not to slow down a dictionary attack.


class FleetInitError(EdgeAgentError):
    """The fleet configuration could not be generated (bad name, existing files, unreadable credentials)."""


# --------------------------------------------------------------------------------------------- credentials

@dataclass
class Credentials:
    """What one identity (device or operator) needs to connect: copy the .cred, .crt, .key and ca.crt."""

    username: str
    password: str
    ca_file: str
    cert_file: str
    key_file: str
    broker_url: str = ""      # TLS listener, mqtts://host:port
    fleet: str = "default"
    plain_url: str = ""       # password listener, mqtt://host:port ("" when there is none)

    def to_file(self, path: str | os.PathLike) -> Path:
        """Write JSON with mode 0600; file paths next to the .cred file are stored relative to it."""
        p = Path(path)
        base = p.parent.resolve()
        data = asdict(self)
        for key in ("ca_file", "cert_file", "key_file"):
            if data[key]:
                f = Path(data[key]).resolve()
                data[key] = str(f.relative_to(base)) if f.is_relative_to(base) else str(f)
        _write_secret(p, (json.dumps(data, indent=2) + "\n").encode())
        return p

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Credentials:
        """Read a .cred file; relative paths are resolved against the file's directory."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise FleetInitError(f"credentials file {p} does not exist") from None
        except (OSError, ValueError) as exc:
            raise FleetInitError(f"cannot read credentials {p}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("username"), str):
            raise FleetInitError(f"credentials file {p} has no username")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("ca_file", "cert_file", "key_file"):
            value = known.get(key) or ""
            known[key] = str((p.parent / value).resolve()) if value and not os.path.isabs(value) else value
        try:
            return cls(**known)
        except TypeError as exc:
            raise FleetInitError(f"credentials file {p} is incomplete: {exc}") from None

    def check_private(self, cred_path: str | os.PathLike) -> None:
        """Refuse (like ssh) a credentials file or client key that group or others may read or write: the
        password and the key are the device's broker identity. Raises FleetInitError saying which file."""
        for path in (Path(cred_path), Path(self.key_file) if self.key_file else None):
            if path is None or not path.exists():
                continue
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise FleetInitError(f"{path} is accessible by group/others (mode {mode:o}): it holds the "
                                     f"identity of '{self.username}'; run `chmod 600 {path}`")

    def transport_kwargs(self) -> dict:
        """``username``/``password``/``tls`` for :class:`edge_agent.transport.Transport`.

        ``tls`` is used only for an ``mqtts://`` URL (the TLS listener takes the identity from the client
        certificate); ``username``/``password`` authenticate on the password listener.
        """
        tls = {"ca_certs": self.ca_file, "certfile": self.cert_file or None, "keyfile": self.key_file or None}
        return {"username": self.username, "password": self.password, "tls": tls}


@dataclass
class FleetInitResult:
    """Paths of what :func:`init_fleet` wrote."""

    conf_path: Path
    ca_file: Path
    creds: dict[str, Path]
    acl_file: Path | None = None
    passwd_file: Path | None = None
    out_dir: Path | None = None
    urls: dict[str, str] = field(default_factory=dict)   # "tls" and, if configured, "plain"


# --------------------------------------------------------------------------------------------- files

def _write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from creation on."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------------------------- passwords

def _name(cn: str, fleet: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-agent"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"fleet {fleet}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _make_ca(fleet: str, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    name = _name(f"edge-agent fleet {fleet} CA", fleet)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _make_leaf(cn: str, fleet: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
               now: dt.datetime, *, server_names: list[str] | None = None
               ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(cn, fleet)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in server_names]),
                                        critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_crl(out: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
               revoked: dict[int, dt.datetime]) -> Path:
    """(Re)write ``crl.pem`` listing ``revoked`` serials. It stays valid as long as the CA: an expired CRL
    would make OpenSSL refuse every client."""
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - dt.timedelta(minutes=5)).next_update(ca_cert.not_valid_after_utc))
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    path = out / CRL_NAME
    path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


def _load_ca(out: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    except FileNotFoundError as exc:
        raise FleetInitError(f"{out} has no fleet CA ({exc.filename}); run fleet init first, or bring "
                             "ca.key back from offline storage") from None
    except ValueError as exc:
        raise FleetInitError(f"fleet CA in {out} is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FleetInitError(f"{out / 'ca.key'} is not an EC key")
    return key, cert


def _issue(out: Path, name: str, fleet: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
           urls: tuple[str, str], now: dt.datetime) -> tuple[Path, str]:
    """Write ``<name>.key/.crt/.cred`` with a fresh random password; returns (cred path, password)."""
    key, cert = _make_leaf(name, fleet, ca_key, ca_cert, now)
    _write_secret(out / f"{name}.key", _key_pem(key))
    (out / f"{name}.crt").write_bytes(_cert_pem(cert))
    password = secrets.token_urlsafe(24)
    cred = Credentials(username=name, password=password, ca_file=str(out / "ca.crt"),
                       cert_file=str(out / f"{name}.crt"), key_file=str(out / f"{name}.key"),
                       broker_url=urls[0], fleet=fleet, plain_url=urls[1])
    return cred.to_file(out / f"{name}.cred"), password


def _passwd_users(out: Path) -> dict[str, str]:
    path = out / "passwd"
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def _write_passwd(out: Path, users: dict[str, str]) -> None:
    """Rewrite ``passwd``, keeping the group and mode init gave it (the broker may read it via its group)."""
    path = out / "passwd"
    before = path.stat() if path.exists() else None
    _write_secret(path, "".join(f"{u}:{h}\n" for u, h in users.items()).encode())
    if before is not None:
        if os.geteuid() == 0:
            os.chown(path, before.st_uid, before.st_gid)
        os.chmod(path, before.st_mode & 0o777)


def add_identity(out_dir: str | os.PathLike, name: str) -> Path:
    """Issue a certificate, password and ``.cred`` for a new device in an existing fleet directory.

    TLS clients can connect at once (the broker trusts the CA, the ACL is pattern-based); the password
    listener needs a reload (``SIGHUP`` to Mosquitto) to see the new ``passwd`` line.
    """
    out = Path(out_dir).resolve()
    topics.check_segment("device name", name)
    ca_key, ca_cert = _load_ca(out)
    old = _any_cred(out)
    if (out / f"{name}.crt").exists():
        raise FleetInitError(f"identity '{name}' already exists in {out}; revoke it first to re-issue")
    cred_path, password = _issue(out, name, old.fleet, ca_key, ca_cert, (old.broker_url, old.plain_url),
                                 dt.datetime.now(dt.timezone.utc))
    users = _passwd_users(out)
    users[name] = hash_password(password)
    _write_passwd(out, users)
    return cred_path


def revoke_identity(out_dir: str | os.PathLike, name: str) -> Path:
    """Revoke ``name``: its certificate serial goes into ``crl.pem``, its ``passwd`` line is removed and its
    files are deleted. Mosquitto must be restarted (or, for the password listener, sent ``SIGHUP``)."""
    out = Path(out_dir).resolve()
    ca_key, ca_cert = _load_ca(out)
    crt = out / f"{name}.crt"
    if not crt.exists():
        raise FleetInitError(f"no identity '{name}' in {out}")
    serial = x509.load_pem_x509_certificate(crt.read_bytes()).serial_number
    revoked: dict[int, dt.datetime] = {}
    if (out / CRL_NAME).exists():
        crl = x509.load_pem_x509_crl((out / CRL_NAME).read_bytes())
        revoked = {r.serial_number: r.revocation_date_utc for r in crl}
    revoked[serial] = dt.datetime.now(dt.timezone.utc)
    path = _write_crl(out, ca_key, ca_cert, revoked)
    users = _passwd_users(out)
    users.pop(name, None)
    _write_passwd(out, users)
    for suffix in (".crt", ".key", ".cred"):
        (out / f"{name}{suffix}").unlink(missing_ok=True)
    return path


def _any_cred(out: Path) -> Credentials:
    for p in sorted(out.glob("*.cred")):
        return Credentials.from_file(p)
    raise FleetInitError(f"{out} holds no .cred file to take the fleet name and broker URLs from")


# --------------------------------------------------------------------------------------------- init

def _broker_account(broker_user: str | None) -> pwd.struct_passwd | None:
    """The account Mosquitto will switch to when started by the current (root) user, else None."""
    if os.geteuid() != 0 or broker_user == "root":
        return None
    for name in ([broker_user] if broker_user else ["mosquitto", "nobody"]):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    if broker_user:
        raise FleetInitError(f"broker user {broker_user!r} does not exist")
    return None


def _grant_broker_access(out: Path, account: pwd.struct_passwd) -> None:
    """Let the unprivileged broker account read its secrets (group 0640) and write its persistence."""
    os.chown(out, 0, account.pw_gid)
    os.chmod(out, 0o750)
    for name in ("server.key", "passwd"):
        os.chown(out / name, 0, account.pw_gid)
        os.chmod(out / name, 0o640)
    os.chown(out / "data", account.pw_uid, account.pw_gid)
    os.chmod(out / "data", 0o700)


_GENERATED = ("ca.key", "ca.crt", "server.key", "server.crt", "passwd", "acl", "mosquitto.conf", "crl.pem")
CRL_NAME = "crl.pem"


def init_fleet(out_dir: str | os.PathLike, devices: list[str], fleet: str = "default",
               operator: str = "operator", host: str = "127.0.0.1", port: int = 8883,
               plain_port: int | None = None, overwrite: bool = False, *, bind: str | None = None,
               broker_user: str | None = None, log_file: str | os.PathLike | None = None,
               stream_topics: list[str] | tuple[str, ...] = (),
               viewers: list[str] | tuple[str, ...] = ()) -> FleetInitResult:
    """Generate CA, certificates, credentials, ``passwd``, ``acl`` and ``mosquitto.conf`` in ``out_dir``.

    ``host`` is the address devices use to reach the broker (an IP or DNS name, put in the server
    certificate and the credentials' URLs); listeners bind to ``bind`` (default: ``host``). ``broker_user``
    is written as Mosquitto's ``user`` option: when Mosquitto is started as root it switches to that user
    (default ``mosquitto``, else ``nobody``); when this runs as root, ``out_dir``, ``server.key`` and
    ``passwd`` are given to that user's group (0750/0640) and ``data/`` to the user, so the broker can
    read them after dropping privileges (``out_dir``'s parents must be traversable by it too).
    Refuses to touch a directory that already holds a fleet unless ``overwrite`` (which replaces the CA:
    every identity must then be re-issued). ``viewers`` are read-only identities (dashboards): they read
    states, loads and signed documents and may write nothing.
    """
    topics.check_segment("fleet", fleet)
    topics.check_segment("operator name", operator)
    names = [topics.check_segment("device name", d) for d in devices]
    for pattern in stream_topics:
        check_stream_filter(pattern)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise FleetInitError(f"device names repeat: {', '.join(dupes)}")
    if operator in names:
        raise FleetInitError(f"device '{operator}' has the operator's name; it would get operator rights")
    viewer_names = [topics.check_segment("viewer name", v) for v in viewers]
    clash = sorted(set(viewer_names) & ({operator} | set(names)))
    if clash or len(set(viewer_names)) != len(viewer_names):
        raise FleetInitError(f"viewer names must be unique and differ from the operator and devices: "
                             f"{', '.join(clash) or 'repeated'}")
    if not host:
        raise FleetInitError("host (the broker address devices connect to) must not be empty")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    existing = [n for n in _GENERATED if (out / n).exists()]
    if existing and not overwrite:
        raise FleetInitError(f"{out} already holds a fleet configuration ({', '.join(existing)}); "
                             "pass overwrite=True (--overwrite) to replace it, CA included")
    (out / "data").mkdir(exist_ok=True)

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, ca_cert = _make_ca(fleet, now)
    _write_secret(out / "ca.key", _key_pem(ca_key))
    (out / "ca.crt").write_bytes(_cert_pem(ca_cert))

    server_names = list(dict.fromkeys([host, "127.0.0.1", "localhost"]))
    srv_key, srv_cert = _make_leaf(host, fleet, ca_key, ca_cert, now, server_names=server_names)
    _write_secret(out / "server.key", _key_pem(srv_key))
    (out / "server.crt").write_bytes(_cert_pem(srv_cert))

    tls_url = f"mqtts://{host}:{port}"
    plain_url = f"mqtt://{host}:{plain_port}" if plain_port is not None else ""
    passwords: dict[str, str] = {}
    creds: dict[str, Path] = {}
    for name in [operator, *names, *viewer_names]:
        creds[name], passwords[name] = _issue(out, name, fleet, ca_key, ca_cert, (tls_url, plain_url), now)
    _write_crl(out, ca_key, ca_cert, {})

    _write_secret(out / "passwd", passwd_text(passwords).encode())
    (out / "acl").write_text(acl_text(fleet, operator, stream_topics, viewer_names))
    conf = out / "mosquitto.conf"
    conf.write_text(mosquitto_conf_text(out, port=port, bind=bind or host, plain_port=plain_port,
                                        broker_user=broker_user,
                                        log_file=Path(log_file).resolve() if log_file else None))
    account = _broker_account(broker_user)
    if account is not None:
        _grant_broker_access(out, account)
    urls = {"tls": tls_url} | ({"plain": plain_url} if plain_url else {})
    return FleetInitResult(conf_path=conf, ca_file=out / "ca.crt", creds=creds, acl_file=out / "acl",
                           passwd_file=out / "passwd", out_dir=out, urls=urls)
