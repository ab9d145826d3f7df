"""Benchmark tasks: one module per task, each implementing :class:`Task` (``load``, ``build_prompt``,
``extract_answer``, ``is_correct`` and a few facts about itself).

:data:`TASKS` is the one list of task names: job specs (``data.task``), their validation and the service's
built-in datasets all read it. To add a task, write its module (``gsm8k.py`` is the model) and list it here.
Torch-free: the API validates specs against this list.
"""

from __future__ import annotations

from twofold.core.tasks import arithmetic, custom, gsm8k, mmlu_pro
from twofold.core.tasks.base import Item, Source, Task

__all__ = ["TASKS", "Item", "Source", "Task", "get_task"]

_ALL: tuple[Task, ...] = (arithmetic, gsm8k, mmlu_pro, custom)
#: Task name -> task module.
TASKS: dict[str, Task] = {task.name: task for task in _ALL}


def get_task(name: str) -> Task:
    """The task called ``name``; ValueError listing the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
