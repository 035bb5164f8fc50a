"""``modelpress sign`` / ``modelpress verify``: a bundle's signature (the optional ``model-signing`` package).

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

from pathlib import Path

from modelpress.errors import EXIT_OK
from modelpress.manifest import require_intact
from modelpress.signing import sign_bundle, verify_signature


def cmd_sign(args) -> int:
    print(f"signature: {sign_bundle(Path(args.bundle), Path(args.key))}")
    return EXIT_OK


def cmd_verify(args) -> int:
    verify_signature(Path(args.bundle), Path(args.key))
    manifest = require_intact(Path(args.bundle))
    print(
        f"verified: {args.bundle} (its signature matches {args.key}; every file matches its manifest; "
        f"gate verdict {manifest.get('verdict')})"
    )
    return EXIT_OK
