"""Signed bundles (optional): ``modelpress sign`` / ``verify`` and ``load(require_signature=...)``.

``manifest.json`` is a checksum list: whoever can swap ``model.int8.onnx`` can write its new sha256
too, and the manifest check still passes. A signature cannot be re-made without the private key.
The OpenSSF ``model-signing`` library (``pip install 'modelpress[sign]'``; imported only here, and
only when signing or verifying) hashes every file of the bundle and signs that list with an
elliptic-curve private key (PEM) into ``<bundle>/model.sig``, a Sigstore bundle (DSSE envelope).

What is signed: every file of the bundle, ``manifest.json`` included, except ``model.sig`` itself
(recorded in the signed payload as its one ignored path). The manifest cannot list the signature
(the signature covers the manifest, so the manifest is written first); it lets ``model.sig`` be
added after publishing, like the engine files. So sign last: a file added after signing (an
engine) fails verification until the bundle is signed again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from modelpress.errors import BackendUnavailableError, BadInputError
from modelpress.manifest import SIGNATURE
import re
from modelpress.manifest import require_intact

#: the password of an encrypted private key (never a command-line flag: those show in `ps`)
PASSWORD_ENV = "MODELPRESS_KEY_PASSWORD"


def _model_signing():
    try:
        import model_signing  # noqa: F401  (the package; its submodules below)
        from model_signing import hashing, signing, verifying
    except ImportError:
        raise BackendUnavailableError(
            "signing needs the model-signing package: pip install 'modelpress[sign]'"
        ) from None
    return hashing, signing, verifying


def _key_file(key: Path, what: str, flag: str = "--key ") -> Path:
    key = Path(key)
    if not key.is_file():
        raise BadInputError(f"{flag}{key}: no such file (the {what} key, PEM)")
    return key


def _signing_errors() -> tuple[type[BaseException], ...]:
    """What model-signing raises for a bad key or signature (besides ValueError): cryptography's
    InvalidSignature, protobuf's ParseError for a file that is not a signature."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from google.protobuf.json_format import ParseError

    # TypeError: an encrypted key without its password (or the reverse); AttributeError: a key that
    # is not an elliptic-curve one (RSA has no curve); KeyError: a payload of the wrong shape
    return (
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        InvalidSignature,
        UnsupportedAlgorithm,
        ParseError,
        UnicodeDecodeError,
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def _mismatch(exc: BaseException) -> str:
    """model-signing's "Signature mismatch: [...]" (digests as bytes reprs) as the files that differ."""

    text = str(exc)  # a list's repr: its quotes may come escaped
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", text)
    parts = [f"changed {', '.join(changed)}"] if changed else []
    for label, kind in (("added", "Extra files found"), ("missing", "Missing files")):
        if found := re.search(kind + r" in model \\?'[^']*\\?': ([^\"'\\\]]+)", text):
            parts.append(f"{label} {found.group(1).strip()}")
    return "; ".join(parts) if text.startswith("Signature mismatch") and parts else _one_line(exc)


def sign_bundle(bundle: Path, private_key: Path) -> Path:
    """Sign ``bundle`` into ``bundle/model.sig`` (replacing an earlier signature). The bundle must
    match its manifest and not be a failed one. Returns the signature's path."""

    bundle = Path(bundle)
    key = _key_file(private_key, "private")
    manifest = require_intact(bundle)  # a bundle that is not what its manifest says is not signed
    if manifest.get("kind", "bundle") != "bundle":
        raise BadInputError(f"{bundle}: a validate report, not a bundle; only bundles are signed")
    if manifest.get("verdict") == "fail":
        raise BadInputError(f'{bundle}: the gate failed this bundle (manifest verdict "fail"); it is not signed')
    hashing, signing, _ = _model_signing()
    config = signing.Config().set_hashing_config(
        # every file, the manifest included; not the signature itself (and no .git* exemptions)
        hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)
    )
    try:
        # bytes: model-signing hands it to cryptography's PEM loader, which refuses a str password
        password = os.environ.get(PASSWORD_ENV) or None
        config.use_elliptic_key_signer(private_key=key, password=password and password.encode("utf-8"))
    except _signing_errors() as exc:
        raise BadInputError(
            f"--key {key}: not a usable elliptic-curve private key ({_one_line(exc)}; "
            f"an encrypted key takes its password from ${PASSWORD_ENV})"
        ) from None
    target = bundle / SIGNATURE
    # written beside the bundle, then moved in: an interrupted sign never leaves half a signature
    fd, tmp = tempfile.mkstemp(prefix=f".{bundle.name}.sig-", dir=bundle.absolute().parent)
    os.close(fd)
    try:
        config.sign(bundle, tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def verify_signature(bundle: Path, public_key: Path, *, flag: str = "--key ") -> None:
    """BadInputError (one line) unless ``bundle/model.sig`` was made by the private key of
    ``public_key`` over exactly the bundle's files as they are now. ``flag``: how the caller's
    user gave the key (``--key``, or ``load()``'s ``require_signature=``), for the messages."""
    bundle = Path(bundle)
    key = _key_file(public_key, "public", flag)
    signature = bundle / SIGNATURE
    if not signature.is_file():
        raise BadInputError(f"{bundle}: no {SIGNATURE} (the bundle is not signed; modelpress sign it)")
    _, _, verifying = _model_signing()
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=key).verify(bundle, signature)
    except _signing_errors() as exc:
        raise BadInputError(f"{bundle}: the signature does not verify against {key} ({_mismatch(exc)})") from None
