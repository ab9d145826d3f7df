"""The spec reader: numbers as people write them, and no way to make it expand, nest or grow without bound."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from twofold.core.configs import JobSpec
from twofold.core.yaml_spec import (
    MAX_DEPTH,
    MAX_SPEC_CHARS,
    SpecSyntaxError,
    load_spec,
    load_spec_file,
    load_yaml,
)

# Ten lists of ten, then ten of those, ...: 10**levels strings once expanded (what safe_load does).
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-5", 1e-5),
        ("1E-5", 1e-5),
        ("3e2", 300.0),
        ("-2e+4", -20000.0),
        ("+1e3", 1000.0),
        ("1.0e-5", 1e-5),
        ("1.5e5", 150000.0),
        (".5e3", 500.0),
        ("2.5", 2.5),
        ("10", 10),
        ("1_000", 1000),
        ("'1e-5'", "1e-5"),
        ("e5", "e5"),
        ("1e", "1e"),
        ("1e5x", "1e5x"),
    ],
)
def test_numbers_read_as_written(text: str, value: object) -> None:
    got = load_yaml(f"v: {text}")["v"]
    assert got == value and type(got) is type(value)


def test_a_spec_with_an_exponent_learning_rate_passes_the_configs() -> None:
    spec = load_spec(
        "teacher: {base_url: 'http://127.0.0.1:9/v1', model: m}\nstudent: {preset: micro}\n"
        "sft: {lr: 1e-5}\nrl: {lr: 5e-7, value_lr: 2E-6}\n"
    )
    job = JobSpec.from_dict(spec)
    assert (job.sft.lr, job.rl.lr, job.rl.value_lr) == (1e-5, 5e-7, 2e-6)


def test_an_alias_bomb_is_refused_at_once_naming_the_line() -> None:
    start = time.perf_counter()
    with pytest.raises(SpecSyntaxError) as info:
        load_spec(BOMB)
    assert time.perf_counter() - start < 0.5
    assert info.value.line == 2 and "alias" in info.value.message


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a: &x 1\nb: *x\n", 2, "alias"),  # a single harmless alias is refused too: specs never need one
        ("base: &b {lr: 1}\nsft:\n  <<: *b\n", 3, "alias"),  # a merge key needs an alias
        ("sft:\n  lr: 1\n  lr: 2\n", 3, "duplicate key 'lr'"),
        ("x: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5), 1, "nested"),
        ("x: [1, 2\n", 2, "not valid YAML"),
        ("x: !!python/object/apply:os.system [ls]\n", 1, "constructor"),
        ("? [a, b]\n: 1\n", 1, "unhashable"),
    ],
)
def test_bad_documents_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(SpecSyntaxError) as info:
        load_spec(text)
    assert info.value.line == line and words in info.value.message, info.value


@pytest.mark.parametrize(("text", "words"), [("- a\n", "mapping"), ("", "empty"), ("7", "mapping")])
def test_a_spec_must_be_a_mapping(text: str, words: str) -> None:
    with pytest.raises(SpecSyntaxError, match=words):
        load_spec(text)


def test_length_is_bounded_before_parsing(tmp_path: Path) -> None:
    with pytest.raises(SpecSyntaxError, match="limit"):
        load_spec("a: " + "x" * MAX_SPEC_CHARS)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * (4 * MAX_SPEC_CHARS + 10))
    with pytest.raises(SpecSyntaxError, match="bytes"):
        load_spec_file(big)


def test_files_and_json_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("sft:\n  lr: 1e-5\nwhen: 2024-01-02\n", encoding="utf-8")
    assert load_spec_file(path) == {"sft": {"lr": 1e-5}, "when": "2024-01-02"}  # dates as strings
    assert load_spec('{"sft": {"lr": 1e-5}}') == {"sft": {"lr": 1e-5}}
    path.write_bytes(b"a: caf\xe9\n")
    with pytest.raises(SpecSyntaxError, match="UTF-8"):
        load_spec_file(path)


def test_the_example_job_reads_and_validates() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "job.yaml"
    assert JobSpec.from_dict(load_spec_file(example)).sft.lr == 1e-5
