"""PII rules, precisely: what is hashed (keyed HMAC-SHA256), what is dropped, what is left alone.

``make mutate`` showed the spec tests let these through: the key-length floor, the per-value
copy of the keyed MAC (without it every hash depends on the values hashed before), which
environment source wins, hashing of non-string values, None and absent features, and that a
spec that only drops needs no key. Expected digests come from the standard library's hmac,
computed independently of the code under test.
"""

from __future__ import annotations

import hashlib
import hmac
import pathlib

import pytest

from schemas.specs import PiiKey, PiiRedactor, SpecError, parse_spec, redactors

SECRET = b"unit-test-key-0123456789abcdef"
SPEC = parse_spec(
    "name: m\nfeatures: [{name: email, type: text, pii: hash}, {name: ssn, type: text, pii: drop},"
    " {name: age, type: numeric, pii: hash}, {name: a, type: numeric}]"
)
DROP_ONLY = parse_spec("name: d\nfeatures: [{name: ssn, type: text, pii: drop}, {name: a, type: numeric}]")
PLAIN = parse_spec("name: p\nfeatures: [{name: a, type: numeric}]")


def hmac_of(data: bytes, secret: bytes = SECRET) -> str:
    return "hmac-sha256:" + hmac.new(secret, data, hashlib.sha256).hexdigest()


def test_the_hash_is_hmac_sha256_of_the_utf8_value_or_its_json() -> None:
    key = PiiKey(SECRET)
    assert key.hash("alice@example.com") == hmac_of(b"alice@example.com")
    assert key.hash("zoë") == hmac_of("zoë".encode())
    assert key.hash(42) == hmac_of(b"42")
    assert key.hash([1, 2]) == hmac_of(b"[1,2]")


def test_each_value_is_hashed_alone_whatever_was_hashed_before() -> None:
    key = PiiKey(SECRET)
    first = key.hash("a")
    key.hash("b")
    assert key.hash("a") == first == hmac_of(b"a")


def test_the_key_is_at_least_16_bytes_and_never_shown() -> None:
    assert PiiKey(b"k" * 16).hash("x") == hmac_of(b"x", b"k" * 16)
    with pytest.raises(ValueError) as info:
        PiiKey(b"k" * 15)
    assert str(info.value) == "PII key must be at least 16 bytes"  # the whole message users see
    assert repr(PiiKey(SECRET)) == "PiiKey(<redacted>)"


def test_the_key_comes_from_the_variable_first_then_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pii.key"
    path.write_bytes(b"file-key-0123456789abcdef\n")  # the trailing newline is not part of the key
    from_file = PiiKey.from_env({"PREDAUDIT_PII_KEY_FILE": str(path)})
    assert from_file is not None and from_file.hash("x") == hmac_of(b"x", b"file-key-0123456789abcdef")
    both = PiiKey.from_env({"PREDAUDIT_PII_KEY": SECRET.decode(), "PREDAUDIT_PII_KEY_FILE": str(path)})
    assert both is not None and both.hash("x") == hmac_of(b"x")
    empty = PiiKey.from_env({"PREDAUDIT_PII_KEY": "", "PREDAUDIT_PII_KEY_FILE": str(path)})
    assert empty is not None and empty.hash("x") == from_file.hash("x")  # an empty variable is unset
    assert PiiKey.from_env({"PREDAUDIT_PII_KEY": "", "PREDAUDIT_PII_KEY_FILE": ""}) is None


def test_without_a_mapping_the_key_comes_from_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREDAUDIT_PII_KEY", SECRET.decode())
    key = PiiKey.from_env()
    assert key is not None and key.hash("x") == hmac_of(b"x")
    monkeypatch.delenv("PREDAUDIT_PII_KEY")
    monkeypatch.delenv("PREDAUDIT_PII_KEY_FILE", raising=False)
    assert PiiKey.from_env() is None


def test_hash_rules_need_a_key_and_the_error_says_which_features_and_how() -> None:
    with pytest.raises(SpecError) as info:
        PiiRedactor(SPEC, None)
    assert (info.value.file, info.value.key) == ("m", "features[].pii")
    assert info.value.message == (
        "features ['email', 'age'] need a PII key: set $PREDAUDIT_PII_KEY or $PREDAUDIT_PII_KEY_FILE"
    )


def test_a_spec_that_only_drops_needs_no_key() -> None:
    red = PiiRedactor(DROP_ONLY, None)
    assert red.active
    assert red.apply({"ssn": "123", "a": 1.0}) == {"a": 1.0}


def test_apply_hashes_and_drops_without_touching_the_input_or_other_features() -> None:
    red = PiiRedactor(SPEC, PiiKey(SECRET))
    features = {"email": "a@b.c", "ssn": "123", "age": 41, "a": 1.5, "extra": "kept"}
    out = red.apply(features)
    assert out == {"email": hmac_of(b"a@b.c"), "age": hmac_of(b"41"), "a": 1.5, "extra": "kept"}
    assert features == {"email": "a@b.c", "ssn": "123", "age": 41, "a": 1.5, "extra": "kept"}


def test_missing_and_null_pii_features_stay_missing_and_null() -> None:
    red = PiiRedactor(SPEC, PiiKey(SECRET))
    assert red.apply({"a": 1.0}) == {"a": 1.0}
    assert red.apply({"email": None, "age": None, "a": 1.0}) == {"email": None, "age": None, "a": 1.0}


def test_a_spec_without_pii_rules_passes_features_through_unchanged() -> None:
    red = PiiRedactor(PLAIN, None)
    features = {"a": 1.0, "email": "a@b.c"}
    assert not red.active
    assert red.apply(features) is features


def test_redactors_keep_only_models_with_pii_rules() -> None:
    key = PiiKey(SECRET)
    reds = redactors({"m": SPEC, "d": DROP_ONLY, "p": PLAIN}, key)
    assert sorted(reds) == ["d", "m"]
    assert reds["m"].apply({"email": "a@b.c"}) == {"email": hmac_of(b"a@b.c")}
    assert reds["d"].apply({"ssn": "1", "a": 2.0}) == {"a": 2.0}
    with pytest.raises(SpecError, match="need a PII key"):
        redactors({"m": SPEC}, None)
    assert redactors({"d": DROP_ONLY, "p": PLAIN}, None).keys() == {"d"}


def test_a_misspelt_pii_key_is_redacted_on_every_event_not_only_the_first() -> None:
    red = PiiRedactor(SPEC, PiiKey(SECRET))
    for _ in range(3):  # the rule of an unexpected key is remembered: later events must get it too
        assert red.apply({"Email ": "a@b.c", "SSN": "1", "AGE": 7, "a": 1.0}) == {
            "Email ": hmac_of(b"a@b.c"),
            "AGE": hmac_of(b"7"),
            "a": 1.0,
        }
    assert red.apply({"EMAIL": None, "other": "x"}) == {"EMAIL": None, "other": "x"}


def _key_file(tmp_path: pathlib.Path, name: str, key: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(key + b"\n")  # as `echo KEY > file` writes it
    return str(path)


def test_a_key_from_a_secret_reference_is_the_stored_value_of_at_least_16_bytes(
    tmp_path: pathlib.Path,
) -> None:
    from transforms.secrets import SecretError

    ref = _key_file(tmp_path, "k16", b"s" * 16)
    assert PiiKey.from_secret(ref).hash("x") == hmac_of(b"x", b"s" * 16)
    assert PiiKey.from_secret(f"file://{ref}").hash("x") == hmac_of(b"x", b"s" * 16)
    short = _key_file(tmp_path, "k15", b"tiny-secret-015")
    with pytest.raises(SecretError) as info:
        PiiKey.from_secret(short)
    err = info.value
    assert (err.code, err.ref, err.fix) == (
        "pii_key_too_short",
        short,
        "store a PII key of at least 16 bytes",
    )
    assert "tiny-secret" not in str(err)  # the one line a user sees never shows the value


def test_the_key_source_order_is_reference_then_variable_then_file_then_secret_variable(
    tmp_path: pathlib.Path,
) -> None:
    keys = {name: f"{name}-key-0123456789abcdef".encode() for name in ("arg", "var", "file", "secret")}
    env = {
        "PREDAUDIT_PII_KEY": keys["var"].decode(),
        "PREDAUDIT_PII_KEY_FILE": _key_file(tmp_path, "file", keys["file"]),
        "PREDAUDIT_PII_KEY_SECRET": _key_file(tmp_path, "secret", keys["secret"]),
    }
    arg = _key_file(tmp_path, "arg", keys["arg"])

    def source(environ: dict[str, str], secret: str = "") -> str:
        key = PiiKey.from_env(environ, secret=secret)
        assert key is not None
        return next(name for name, k in keys.items() if key.hash("x") == hmac_of(b"x", k))

    assert source(env, arg) == "arg"
    assert source(env) == "var"
    assert source({**env, "PREDAUDIT_PII_KEY": ""}) == "file"
    assert source({"PREDAUDIT_PII_KEY_SECRET": env["PREDAUDIT_PII_KEY_SECRET"]}) == "secret"
    assert (
        source({"PREDAUDIT_PII_KEY_FILE": "", "PREDAUDIT_PII_KEY_SECRET": env["PREDAUDIT_PII_KEY_SECRET"]})
        == "secret"
    )
    assert PiiKey.from_env({"PREDAUDIT_PII_KEY_SECRET": ""}) is None
