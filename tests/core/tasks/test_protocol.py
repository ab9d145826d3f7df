"""The task protocol: every task in TASKS loads through the one signature ``load(split, *, path, size, seed)`` on
its real data, job specs accept exactly the names TASKS lists, and bad arguments or rows are named."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from twofold.core.configs import ConfigError, DataConfig
from twofold.core.tasks import TASKS, Item, arithmetic, custom, get_task, gsm8k, mmlu_pro

ROWS = 50


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    """A custom dataset of ROWS rows: questions, chat messages, answers in several forms, some without one."""
    lines = []
    for i in range(ROWS):
        row: dict[str, object] = {"question": f"What is {i} + {i}?"}
        if i % 4 == 1:
            row = {
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{i}?"}]
            }
        if i % 3:
            row["answer"] = [f"#### {2 * i}", f"{2 * i}.0", f"$1,{i:03d}"][i % 3]
        if i % 10 == 0:
            row["id"] = f"mine-{i}"
        lines.append(json.dumps(row))
    lines.insert(10, "")  # blank lines are skipped, and line numbers stay the file's
    file = tmp_path / "rows.jsonl"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return file


def task_path(name: str, request: pytest.FixtureRequest, jsonl: Path) -> Path | None:
    """The ``data.path`` a job would give ``name``: the real data folder, the JSONL file, or nothing."""
    source = TASKS[name].source
    if source == "directory":
        return Path(request.getfixturevalue(f"{name}_dir"))
    return jsonl if source == "file" else None


def test_every_task_implements_the_one_load_signature() -> None:
    assert list(TASKS) == ["arithmetic", "gsm8k", "mmlu_pro", "custom"]
    signatures = {name: str(inspect.signature(task.load)) for name, task in TASKS.items()}
    assert len(set(signatures.values())) == 1, signatures
    for name, task in TASKS.items():
        assert task.name == name and get_task(name) is task
        assert task.extraction_version and task.source in ("generated", "directory", "file")
        for attr in ("build_prompt", "extract_answer", "is_correct"):
            assert callable(getattr(task, attr)), (name, attr)
    # the tasks that reuse GSM8K's rules share its version too, so a change there is recorded for all of them
    assert arithmetic.extraction_version == custom.extraction_version == gsm8k.extraction_version


@pytest.mark.parametrize("name", list(TASKS))
def test_the_branch_free_call_loads_every_task(
    name: str, request: pytest.FixtureRequest, jsonl: Path
) -> None:
    cfg = DataConfig(task=name, path=None if (p := task_path(name, request, jsonl)) is None else str(p))
    task = get_task(cfg.task)
    train = task.load("train", path=cfg.path, size=cfg.train_size, seed=cfg.seed)
    test = task.load("test", path=cfg.path, size=cfg.test_size, seed=cfg.seed)
    assert 0 < len(train) <= cfg.train_size and 0 < len(test) <= cfg.test_size
    assert all(isinstance(it, Item) and it.question for it in train + test)
    assert not {it.id for it in train} & {it.id for it in test}
    assert len({it.id for it in train}) == len(train)
    # the same call gives the same items, and a shorter size is a prefix of a longer one
    assert task.load("train", path=cfg.path, size=cfg.train_size, seed=cfg.seed) == train
    assert task.load("train", path=cfg.path, size=7, seed=cfg.seed) == train[:7]
    if cfg.gold_available:
        gold = [it for it in train if it.answer is not None]
        assert len(gold) == len(train)
        assert sum(task.is_correct(it.answer, it.answer) for it in gold) == len(gold)


def test_size_zero_keeps_everything(gsm8k_dir: Path, mmlu_pro_dir: Path, jsonl: Path) -> None:
    lines = sum(1 for _ in (gsm8k_dir / "test.jsonl").open(encoding="utf-8"))
    assert len(gsm8k.load("test", path=gsm8k_dir, size=0)) == lines
    mmlu = [mmlu_pro.load(s, path=mmlu_pro_dir) for s in ("train", "test")]
    assert sum(map(len, mmlu)) == 12032
    rows = [custom.load(s, path=jsonl, seed=3) for s in ("train", "test")]
    assert len(rows[1]) == int(ROWS * custom.TEST_FRACTION) and sum(map(len, rows)) == ROWS
    # generated problems are endless, so 0 means the task's default sizes
    assert len(arithmetic.load("train")) == arithmetic.DEFAULT_SIZES["train"]
    assert len(arithmetic.load("test", size=0)) == arithmetic.DEFAULT_SIZES["test"]


def test_custom_rows_split_by_a_seeded_shuffle(jsonl: Path) -> None:
    train = custom.load("train", path=jsonl, seed=0)
    test = custom.load("test", path=jsonl, seed=0)
    assert {it.id for it in train} | {it.id for it in test} == {
        f"mine-{i}" if i % 10 == 0 else f"row-{i + 1 + (i >= 10)}" for i in range(ROWS)
    }
    other = custom.load("test", path=jsonl, seed=1)
    assert {it.id for it in other} != {it.id for it in test}
    by_question = {it.question: it for it in train + test}
    assert by_question["What is 3 + 3?"].answer is None  # no answer given
    assert by_question["What is 2 + 2?"].answer == "1002"  # "$1,002" after GSM8K's normalisation
    assert by_question["13?"].answer == "26"  # the user turn of a chat row; "26.0" normalised


@pytest.mark.parametrize(
    ("split", "size", "with_path", "message"),
    [
        ("validation", 0, True, "split must be 'train' or 'test'"),
        ("train", -1, True, "size must be >= 0"),
        ("train", 0, False, "needs a data path"),
    ],
)
@pytest.mark.parametrize("name", ["gsm8k", "mmlu_pro", "custom"])
def test_bad_arguments_are_named(
    name: str, split: str, size: int, with_path: bool, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        TASKS[name].load(split, path=tmp_path if with_path else None, size=size)


def test_arithmetic_sizes_are_bounded() -> None:
    with pytest.raises(ValueError, match="size must be <= 1,000,000"):
        arithmetic.load("train", size=arithmetic.MAX_SIZE + 1)
    with pytest.raises(ValueError, match="size must be >= 0"):
        arithmetic.load("test", size=-5)


@pytest.mark.parametrize(
    ("name", "file", "row", "message"),
    [
        ("gsm8k", "train.jsonl", '{"question": "q"}', "line 2: missing field 'answer'"),
        ("gsm8k", "train.jsonl", '{"question": "q", "answer": "#### 1"', "line 2: not valid JSON"),
        ("mmlu_pro", "test.jsonl", '["a list"]', "line 2: expected a JSON object, got list"),
        ("mmlu_pro", "test.jsonl", '{"question_id": 9, "question": "q"}', "line 2: missing field 'category'"),
        ("custom", "rows.jsonl", '{"answer": "3"}', "line 2: needs a `question`, or `messages`"),
        ("custom", "rows.jsonl", '{"messages": "hi"}', "line 2: needs a `question`, or `messages`"),
    ],
)
def test_a_bad_row_names_its_file_and_line(
    name: str, file: str, row: str, message: str, tmp_path: Path
) -> None:
    good = {
        "gsm8k": {"question": "q", "answer": "1+1=2 #### 2"},
        "mmlu_pro": {
            "question_id": 1,
            "category": "c",
            "question": "q",
            "options": ["x", "y"],
            "answer": "A",
        },
        "custom": {"question": "q"},
    }[name]
    (tmp_path / file).write_text(json.dumps(good) + "\n" + row + "\n", encoding="utf-8")
    path = tmp_path / file if TASKS[name].source == "file" else tmp_path
    with pytest.raises(ValueError, match=message) as info:
        TASKS[name].load("train", path=path)
    assert str(tmp_path / file) in str(info.value)


def test_specs_accept_exactly_the_listed_tasks() -> None:
    for name, task in TASKS.items():
        cfg = DataConfig(task=name, path=None if task.source == "generated" else "somewhere")
        assert cfg.gold_available is task.gold
    with pytest.raises(ConfigError, match="unknown task 'squad'; use one of arithmetic, gsm8k") as info:
        DataConfig(task="squad")
    assert info.value.param == "data.task"
    with pytest.raises(ConfigError) as info:
        DataConfig(task="mmlu_pro")
    assert info.value.param == "data.path"
    assert DataConfig(task="custom", path="rows.jsonl", has_gold=True).gold_available
    with pytest.raises(ValueError, match="unknown task 'squad'"):
        get_task("squad")
