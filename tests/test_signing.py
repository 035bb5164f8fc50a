"""Signed bundles (issue 21 case 10): the manifest is a checksum list, so a model swapped and
re-hashed in manifest.json passes it; ``modelpress sign`` / ``verify`` (OpenSSF model-signing, an
elliptic-curve key pair made here) and ``load(require_signature=...)`` catch it.

The bundle is put together here from the tiny BERT's export (no run needed): ``load`` only reads
bundle.json, the tokenizer, the model file and the manifest."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import task_for

from modelpress.errors import BadInputError
from modelpress.manifest import sha256, verify

needs_signing = pytest.mark.skipif(
    importlib.util.find_spec("model_signing") is None, reason="the sign extra (model-signing) is not installed"
)


def _key_pair(folder: Path, name: str = "key") -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def _make_bundle(root: Path, bert_onnx, *, passed: bool = True) -> Path:
    from modelpress.bundle import write_bundle_meta
    from modelpress.manifest import write_manifest
    from modelpress.modalities.text import TEXT

    task = task_for()
    root.mkdir(parents=True)
    shutil.copyfile(bert_onnx.onnx_path, root / "model.int8.onnx")
    TEXT.save_preprocessor(TEXT.load_preprocessor(str(bert_onnx.model.path)), root / TEXT.preprocessor_dir)
    names = list(bert_onnx.result.input_names)
    write_bundle_meta(root, task=task, input_names=names, max_length=32)
    write_manifest(
        root, recipe={"name": root.name}, task=task.describe(), metrics={}, gate={"passed": passed}, input_names=names
    )
    return root


def _swap_model(root: Path) -> None:
    """What case 10 did: another model in place of model.int8.onnx, and its sha256 in the manifest."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(root / "model.int8.onnx"))
    weight = next(i for i in model.graph.initializer if len(i.dims) == 2 and i.dims[0] != i.dims[1])
    w = numpy_helper.to_array(weight)
    noise = (
        np.random.default_rng(0).normal(0, w.std(), w.shape).astype(w.dtype)
    )  # not a constant: LayerNorm undoes that
    weight.CopyFrom(numpy_helper.from_array(w + noise, weight.name))
    onnx.save(model, str(root / "model.int8.onnx"))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["model.int8.onnx"] = {
        "sha256": sha256(root / "model.int8.onnx"),
        "bytes": (root / "model.int8.onnx").stat().st_size,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    return lines[-1]


@needs_signing
def test_a_swapped_and_rehashed_model_passes_the_manifest_but_not_the_signature(bert_onnx, tmp_path, capsys):
    """issue 21 case 10: before, the swapped bundle passed ``gate``'s and ``load()``'s checks and
    nothing else could tell."""
    from modelpress.bundle import load
    from modelpress.cli import main

    private, public = _key_pair(tmp_path)
    bundle = _make_bundle(tmp_path / "out" / "signed", bert_onnx)
    assert main(["sign", str(bundle), "--key", str(private)]) == 0
    assert capsys.readouterr().out.strip() == f"signature: {bundle / 'model.sig'}"
    assert (bundle / "model.sig").is_file() and sorted(p.name for p in bundle.parent.iterdir()) == ["signed"]
    assert verify(bundle) == ["+model.sig"] and verify(bundle, allow_later=True) == []  # a later file
    assert main(["verify", str(bundle), "--key", str(public)]) == 0
    assert capsys.readouterr().out.startswith(f"verified: {bundle}")
    texts = ["the quick brown fox", "a dog sat on the mat"]
    with load(bundle) as plain, load(bundle, require_signature=public) as checked:
        before = plain.embed(texts)
        np.testing.assert_array_equal(checked.embed(texts), before)

    _swap_model(bundle)
    assert verify(bundle, allow_later=True) == []  # the manifest check cannot tell
    with load(bundle) as plain:
        assert not np.allclose(plain.embed(texts), before, atol=1e-3)  # ... yet it is another model
    assert main(["verify", str(bundle), "--key", str(public)]) == 2
    assert _error_line(capsys) == (
        f"modelpress: error: {bundle}: the signature does not verify against {public} "
        "(changed manifest.json, model.int8.onnx)"
    )
    with pytest.raises(BadInputError, match=r"signature does not verify .*changed manifest.json, model.int8.onnx"):
        load(bundle, require_signature=public)


@needs_signing
def test_load_names_its_own_argument_for_a_bad_public_key(bert_onnx, tmp_path):
    """load(require_signature=True) raised pathlib's "expected str, bytes or os.PathLike object, not
    bool"; a missing key file was reported as the CLI's "--key", which load() has not."""
    from modelpress.bundle import load

    private, public = _key_pair(tmp_path)
    bundle = _make_bundle(tmp_path / "out" / "signed", bert_onnx)
    from modelpress.signing import sign_bundle

    sign_bundle(bundle, private)
    for bad in (True, public.read_bytes(), 3):
        with pytest.raises(
            TypeError,
            match=r"^load\(\): require_signature must be the path of the signer's "
            r"public key \(PEM\), got " + type(bad).__name__,
        ):
            load(bundle, require_signature=bad)
    with pytest.raises(BadInputError) as err:
        load(bundle, require_signature=tmp_path / "nope.pem")
    assert str(err.value) == f"require_signature={tmp_path / 'nope.pem'}: no such file (the public key, PEM)"
    with load(bundle, require_signature=str(public)) as checked:
        assert checked.embed("a dog").shape == (1, 32)


@needs_signing
def test_an_encrypted_key_signs_with_its_password_from_the_environment(bert_onnx, tmp_path, monkeypatch, capsys):
    """$MODELPRESS_KEY_PASSWORD was handed on as a str, which cryptography refuses ("Cannot convert
    <class 'str'> instance to a buffer"): no encrypted key could sign, whatever its password."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelpress.cli import main

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "enc.pem", tmp_path / "enc.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption("s\u00e9cret".encode()),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    bundle = _make_bundle(tmp_path / "out" / "signed", bert_onnx)
    assert main(["sign", str(bundle), "--key", str(private)]) == 2  # no password given
    assert "Password was not given but private key is encrypted" in _error_line(capsys)
    monkeypatch.setenv("MODELPRESS_KEY_PASSWORD", "wrong")
    assert main(["sign", str(bundle), "--key", str(private)]) == 2
    assert _error_line(capsys).startswith(
        f"modelpress: error: --key {private}: not a usable elliptic-curve private key"
    )
    monkeypatch.setenv("MODELPRESS_KEY_PASSWORD", "s\u00e9cret")
    assert main(["sign", str(bundle), "--key", str(private)]) == 0
    assert main(["verify", str(bundle), "--key", str(public)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"verified: {bundle}")


@needs_signing
def test_another_key_an_added_file_or_no_signature_fail_verification(bert_onnx, tmp_path, capsys):
    from modelpress.bundle import load
    from modelpress.cli import main

    private, public = _key_pair(tmp_path)
    _, stranger = _key_pair(tmp_path, "stranger")
    bundle = _make_bundle(tmp_path / "b", bert_onnx)
    with pytest.raises(BadInputError, match="no model.sig"):
        load(bundle, require_signature=public)
    assert main(["sign", str(bundle), "--key", str(private)]) == 0
    capsys.readouterr()
    assert main(["verify", str(bundle), "--key", str(stranger)]) == 2
    assert "signature does not verify" in _error_line(capsys)
    (bundle / "model.plan").write_bytes(b"an engine built after signing")  # fine for the manifest
    assert verify(bundle, allow_later=True) == []
    with pytest.raises(BadInputError, match=r"signature does not verify .*\(added model.plan\)"):
        load(bundle, require_signature=public)
    assert main(["sign", str(bundle), "--key", str(private)]) == 0  # signed again, it verifies
    assert main(["verify", str(bundle), "--key", str(public)]) == 0
    capsys.readouterr()
    assert main(["verify", str(bundle), "--key", str(tmp_path / "absent.pem")]) == 2
    assert (
        _error_line(capsys) == f"modelpress: error: --key {tmp_path / 'absent.pem'}: no such file (the public key, PEM)"
    )
    assert main(["sign", str(bundle), "--key", str(public)]) == 2  # a public key where the private one goes
    assert "not a usable elliptic-curve private key" in _error_line(capsys)


@needs_signing
def test_sign_refuses_a_failed_or_broken_bundle(bert_onnx, tmp_path, capsys):
    from modelpress.cli import main

    private, _ = _key_pair(tmp_path)
    failed = _make_bundle(tmp_path / "failed", bert_onnx, passed=False)
    assert main(["sign", str(failed), "--key", str(private)]) == 2
    assert _error_line(capsys).endswith('the gate failed this bundle (manifest verdict "fail"); it is not signed')
    broken = _make_bundle(tmp_path / "broken", bert_onnx)
    (broken / "stray.txt").write_text("x", encoding="utf-8")
    assert main(["sign", str(broken), "--key", str(private)]) == 2
    assert "does not match its manifest.json (+stray.txt" in _error_line(capsys)
    assert not (failed / "model.sig").exists() and not (broken / "model.sig").exists()


def test_without_model_signing_sign_and_verify_are_one_line_exit_2(bert_onnx, tmp_path, monkeypatch, capsys):
    import sys

    from modelpress.cli import main

    private, public = tmp_path / "key.pem", tmp_path / "key.pub.pem"  # never read: the import fails first
    private.write_text("a key", encoding="utf-8")
    public.write_text("a key", encoding="utf-8")
    bundle = _make_bundle(tmp_path / "b", bert_onnx)
    monkeypatch.setitem(sys.modules, "model_signing", None)  # import model_signing -> ImportError
    for command, key in (("sign", private), ("verify", public)):
        if command == "verify":
            (bundle / "model.sig").write_text("{}", encoding="utf-8")
        assert main([command, str(bundle), "--key", str(key)]) == 2
        assert (
            _error_line(capsys)
            == "modelpress: error: signing needs the model-signing package: pip install 'modelpress[sign]'"
        )


def test_model_signing_is_imported_only_to_sign_or_verify():
    import subprocess
    import sys

    from conftest import REPO

    code = (
        "import sys, modelpress.cli, modelpress.bundle, modelpress.signing, modelpress.pipeline; "
        "sys.exit('model_signing' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0
