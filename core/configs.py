"""Frozen, torch-free stage configs and the job spec that groups them.

Every field has a default and a help text (``field(metadata={"help": ...})``). ``__post_init__`` rejects bad
combinations with a message that names the field and says how to fix it. The API validates job specs with these
same classes, so this module must stay importable without torch.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from twofold.core.tasks import TASKS, Source

RewardSource = Literal["reward_model", "pseudo_label", "gold"]
RLAlgo = Literal["ppo", "grpo"]

TINY_PRESETS = ("tiny-teacher", "tiny-student", "micro")
#: Names of stage runs (``rl``, a variant's ``rl_gold``) and of the workspace checkpoints they write: they name
#: directories and fill the service's 32-character name columns.
RUN_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_EVAL_MODELS = 16


class ConfigError(ValueError):
    """A job spec or stage config is invalid; ``param`` is the dotted path of the offending field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


def _check(cond: bool, param: str, message: str) -> None:
    if not cond:
        raise ConfigError(param, message)


#: Bounds on the training-loop options every training stage has.
MAX_GRAD_ACCUMULATION = 1024
MAX_GRAD_NORM = 1e4
MAX_SAVE_EVERY = 1_000_000
MAX_GRAD_NORM_HELP = "clip the gradient's global norm to this before each optimiser step"
SAVE_EVERY_HELP = (
    "write resumable state (weights, optimisers, RNG, data cursor) every N steps and at the end; 0 = only at "
    "the end"
)


def _check_loop(
    section: str, accumulation: int, batch_size: int, max_grad_norm: float, save_every: int
) -> None:
    """The shared checks of ``gradient_accumulation_steps``, ``max_grad_norm`` and ``save_every``."""
    _check(
        1 <= accumulation <= min(batch_size, MAX_GRAD_ACCUMULATION),
        f"{section}.gradient_accumulation_steps",
        f"must be in [1, {min(batch_size, MAX_GRAD_ACCUMULATION)}]: each micro-batch needs at least one "
        f"sequence of the {batch_size} per step, and at most {MAX_GRAD_ACCUMULATION} micro-batches",
    )
    _check(
        0 < max_grad_norm <= MAX_GRAD_NORM,
        f"{section}.max_grad_norm",
        f"must be in (0, {MAX_GRAD_NORM:g}]",
    )
    _check(
        0 <= save_every <= MAX_SAVE_EVERY,
        f"{section}.save_every",
        f"must be in [0, {MAX_SAVE_EVERY}] (0 saves only at the end)",
    )


def _tasks_reading(source: Source) -> str:
    """The names of the tasks whose questions come from ``source``, for the help texts."""
    return ", ".join(name for name, task in TASKS.items() if task.source == source)


@dataclass(frozen=True)
class DataConfig:
    """Which questions to distil on and which to evaluate on."""

    task: str = _help(f"one of {' | '.join(TASKS)}", default="arithmetic")
    path: str | None = _help(
        f"data directory ({_tasks_reading('directory')}) or JSONL file ({_tasks_reading('file')}); "
        f"unused by {_tasks_reading('generated')}",
        default=None,
    )
    train_size: int = _help("training questions to use (0 = all available)", default=2000)
    test_size: int = _help("held-out questions to evaluate on (0 = all available)", default=500)
    seed: int = _help("seed for generated problems and splits", default=0)
    has_gold: bool = _help("custom datasets: whether every row carries an `answer`", default=False)

    def __post_init__(self) -> None:
        _check(self.train_size >= 0, "data.train_size", "must be >= 0")
        _check(self.test_size >= 0, "data.test_size", "must be >= 0")
        _check(self.task in TASKS, "data.task", f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        if TASKS[self.task].source != "generated":
            _check(self.path is not None, "data.path", f"task {self.task!r} needs a data path")

    @property
    def gold_available(self) -> bool:
        """Whether items carry gold answers (never used for training except by the `gold` control)."""
        return TASKS[self.task].gold or self.has_gold


@dataclass(frozen=True)
class ModelConfig:
    """A model to build (tiny preset) or load (path to a Hugging Face checkpoint directory)."""

    preset: str | None = _help(f"tiny preset to initialise: one of {', '.join(TINY_PRESETS)}", default=None)
    path: str | None = _help("local Hugging Face checkpoint directory (weights + tokenizer)", default=None)
    dtype: Literal["float32", "bfloat16", "float16"] = _help("weights dtype for training", default="float32")

    def __post_init__(self) -> None:
        _check(
            (self.preset is None) != (self.path is None),
            "student",
            "give exactly one of `preset` (a tiny model) or `path` (a checkpoint directory)",
        )
        if self.preset is not None:
            _check(
                self.preset in TINY_PRESETS, "student.preset", f"unknown preset; use one of {TINY_PRESETS}"
            )


@dataclass(frozen=True)
class TeacherConfig:
    """An OpenAI-compatible teacher endpoint and how to sample it."""

    base_url: str = _help("endpoint root, e.g. http://127.0.0.1:8000/v1", default="")
    model: str = _help("model name as the endpoint knows it", default="")
    api_key: str | None = _help("bearer key for the endpoint; never echoed by the API or logs", default=None)
    api: Literal["completions", "chat"] = _help(
        "/v1/completions or /v1/chat/completions", default="completions"
    )
    temperatures: tuple[float, ...] = _help(
        "sampling temperatures; each gets `n` samples", default=(0.7, 1.0)
    )
    n: int = _help("samples per question and temperature", default=4)
    top_p: float = _help("nucleus sampling", default=1.0)
    max_tokens: int = _help("max completion tokens per sample (always sent)", default=128)
    stop: tuple[str, ...] = _help("stop sequences", default=())
    seed: int | None = _help("request seed (endpoints that support it)", default=0)
    concurrency: int = _help("max requests in flight", default=4)
    prompts_per_request: int = _help("prompts batched into one /v1/completions call", default=16)
    timeout_s: float = _help("per-request timeout in seconds", default=60.0)
    max_retries: int = _help("retries per request on connection errors, 408, 429, 5xx", default=5)
    backoff_s: float = _help("first retry delay; doubles each try, with jitter", default=0.5)
    backoff_max_s: float = _help("cap on one retry delay", default=20.0)

    def __post_init__(self) -> None:
        _check(bool(self.base_url), "teacher.base_url", "is required (an OpenAI-compatible endpoint root)")
        _check(
            self.base_url.startswith(("http://", "https://")),
            "teacher.base_url",
            "must start with http(s)://",
        )
        _check(
            "?" not in self.base_url and "#" not in self.base_url,
            "teacher.base_url",
            "must not contain '?' or '#' (the client appends paths such as /models to it)",
        )
        _check(bool(self.model), "teacher.model", "is required")
        _check(len(self.temperatures) > 0, "teacher.temperatures", "give at least one temperature")
        _check(
            all(0.0 <= t <= 2.0 for t in self.temperatures), "teacher.temperatures", "each must be in [0, 2]"
        )
        _check(self.n >= 1, "teacher.n", "must be >= 1")
        _check(0.0 < self.top_p <= 1.0, "teacher.top_p", "must be in (0, 1]")
        _check(self.max_tokens >= 1, "teacher.max_tokens", "must be >= 1")
        _check(self.concurrency >= 1, "teacher.concurrency", "must be >= 1")
        _check(self.prompts_per_request >= 1, "teacher.prompts_per_request", "must be >= 1")
        _check(self.timeout_s > 0, "teacher.timeout_s", "must be > 0")
        _check(self.max_retries >= 0, "teacher.max_retries", "must be >= 0")

    @property
    def samples_per_question(self) -> int:
        """Teacher samples drawn for each question."""
        return self.n * len(self.temperatures)


@dataclass(frozen=True)
class SFTConfig:
    """Supervised warm-up of the student on teacher answers that agree with the teacher's majority."""

    epochs: float = _help("passes over the agreeing teacher responses", default=2.0)
    lr: float = _help("peak learning rate (AdamW, cosine decay)", default=3e-3)
    batch_size: int = _help("sequences per optimiser step", default=64)
    warmup_steps: int = _help("linear warm-up steps", default=20)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    max_length: int = _help("prompt + completion tokens kept", default=256)
    max_per_question: int = _help("agreeing teacher responses kept per question (0 = all)", default=0)
    holdout_questions: int = _help(
        "kept questions held out of SFT for a label-free check: the student's greedy answers are compared with "
        "the teacher's majority answers (no gold) every check_every steps and the checkpoint that agrees most "
        "is kept, the earlier one on a tie (0 = no check; the last step is kept)",
        default=0,
    )
    check_every: int = _help("steps between those checks", default=100)
    patience: int = _help(
        "stop after this many checks in a row without a higher agreement (0 = train every epoch)", default=0
    )
    gradient_accumulation_steps: int = _help(
        "micro-batches per optimiser step: a step's batch_size sequences are split into this many, each run "
        "forward and backward on its own (less memory), their gradients adding up to the whole step's",
        default=1,
    )
    max_grad_norm: float = _help(MAX_GRAD_NORM_HELP, default=1.0)
    save_every: int = _help(SAVE_EVERY_HELP, default=50)

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "sft.epochs", "must be > 0")
        _check(self.lr > 0, "sft.lr", "must be > 0")
        _check(self.batch_size >= 1, "sft.batch_size", "must be >= 1")
        _check(self.max_length >= 8, "sft.max_length", "must be >= 8")
        _check(self.holdout_questions >= 0, "sft.holdout_questions", "must be >= 0")
        _check(self.check_every >= 1, "sft.check_every", "must be >= 1")
        _check(self.patience >= 0, "sft.patience", "must be >= 0")
        _check_loop(
            "sft", self.gradient_accumulation_steps, self.batch_size, self.max_grad_norm, self.save_every
        )
        _check(
            self.patience == 0 or self.holdout_questions > 0,
            "sft.patience",
            "needs sft.holdout_questions > 0 (the checks it counts are made on those questions)",
        )


@dataclass(frozen=True)
class LabelConfig:
    """Self-supervised pseudo-labels: agreement with the teacher's majority answer."""

    student_samples: int = _help("student samples per question to label (the paper uses 30)", default=4)
    student_temperature: float = _help("temperature of those student samples", default=1.0)
    min_vote_share: float = _help(
        "keep a question only if its majority answer has at least this share of parseable teacher votes",
        default=0.0,
    )
    max_new_tokens: int = _help("max tokens per student sample", default=128)

    def __post_init__(self) -> None:
        _check(self.student_samples >= 0, "labels.student_samples", "must be >= 0")
        _check(0.0 <= self.min_vote_share <= 1.0, "labels.min_vote_share", "must be in [0, 1]")
        _check(self.student_temperature > 0, "labels.student_temperature", "must be > 0")


@dataclass(frozen=True)
class RewardModelConfig:
    """A reward model trained on the pseudo-labelled responses.

    ``kind`` picks how a response is scored. ``scalar`` is the classic RLHF reward model: a linear head on the
    last token's hidden state (transformers' ``*ForSequenceClassification``). ``implicit`` is a causal LM
    initialised from the SFT student whose reward is ``beta * sum_t log(pi(y_t) / pi_sft(y_t))`` over the
    response tokens (the implicit reward of Yuan et al. 2024, "Free Process Rewards without Process Labels"),
    trained with the same BCE and Bradley-Terry losses; it reuses the language-model head, so it learns from far
    fewer labels, which is what tiny models need (docs/results.md).
    """

    kind: Literal["scalar", "implicit"] = _help(
        "scalar: a scalar head on the last token; implicit: beta * log-ratio of a fine-tuned LM to the SFT model",
        default="scalar",
    )
    beta: float = _help("implicit: scale of the log-ratio reward (the logit of the label)", default=0.5)
    init: Literal["student_base", "sft"] = _help(
        "initialise from the student's base weights or from the SFT checkpoint (implicit: always sft)",
        default="student_base",
    )
    loss: Literal["bce", "bradley_terry", "both"] = _help(
        "pointwise BCE on labels, pairwise Bradley-Terry on (agree, disagree) pairs, or their sum",
        default="both",
    )
    epochs: float = _help("passes over the labelled responses", default=2.0)
    lr: float = _help("peak learning rate", default=1e-3)
    batch_size: int = _help("responses per step", default=64)
    max_length: int = _help("tokens per prompt + response", default=256)
    holdout_fraction: float = _help("share of questions held out to report accuracy", default=0.1)
    gradient_accumulation_steps: int = _help(
        "micro-batches per optimiser step: a step's questions are split into this many (fewer when a step has "
        "fewer questions), each run forward and backward on its own (less memory), their gradients adding up "
        "to the whole step's",
        default=1,
    )
    max_grad_norm: float = _help(MAX_GRAD_NORM_HELP, default=1.0)
    save_every: int = _help(SAVE_EVERY_HELP, default=50)

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "reward_model.epochs", "must be > 0")
        _check(self.lr > 0, "reward_model.lr", "must be > 0")
        _check(self.batch_size >= 2, "reward_model.batch_size", "must be >= 2")
        _check(0.0 <= self.holdout_fraction < 1.0, "reward_model.holdout_fraction", "must be in [0, 1)")
        _check(self.beta > 0, "reward_model.beta", "must be > 0")
        _check_loop(
            "reward_model",
            self.gradient_accumulation_steps,
            self.batch_size,
            self.max_grad_norm,
            self.save_every,
        )
        if self.kind == "implicit":
            _check(
                self.init == "sft",
                "reward_model.init",
                "an implicit reward model starts from the SFT checkpoint (its reference); set init: sft",
            )


@dataclass(frozen=True)
class RLConfig:
    """RL of the SFT student against a reward source."""

    algo: RLAlgo = _help("ppo (as in the paper) or grpo", default="ppo")
    reward: RewardSource = _help(
        "reward_model (the method), pseudo_label (agreement with the majority), gold (control)",
        default="reward_model",
    )
    steps: int = _help("optimiser rounds (one rollout batch each)", default=100)
    batch_size: int = _help("sequences per rollout batch (prompts x samples_per_prompt)", default=64)
    samples_per_prompt: int = _help("responses per prompt (GRPO groups; 1 is usual for PPO)", default=1)
    ppo_epochs: int = _help("passes over each rollout batch", default=2)
    mini_batch_size: int = _help("sequences per gradient step within a rollout batch", default=32)
    gradient_accumulation_steps: int = _help(
        "micro-batches per gradient step: a mini-batch is split into this many (it must divide "
        "mini_batch_size), each run forward and backward on its own (less memory), their gradients adding up "
        "to the mini-batch's",
        default=1,
    )
    lr: float = _help("policy learning rate", default=5e-4)
    value_lr: float = _help("value-head learning rate (PPO)", default=1e-3)
    clip_range: float = _help("policy ratio clip epsilon", default=0.2)
    value_clip: float = _help("value clip range (PPO)", default=0.2)
    vf_coef: float = _help("value loss weight (PPO)", default=0.5)
    kl_coef: float = _help("KL penalty to the SFT reference", default=0.05)
    gamma: float = _help("discount (PPO GAE)", default=1.0)
    lam: float = _help("GAE lambda (PPO)", default=0.95)
    temperature: float = _help("rollout sampling temperature", default=1.0)
    max_new_tokens: int = _help("max tokens per rollout response", default=128)
    reward_scale: float = _help("multiply rewards by this", default=1.0)
    whiten_rewards: bool = _help("normalise rewards per batch (PPO)", default=False)
    max_grad_norm: float = _help(MAX_GRAD_NORM_HELP, default=1.0)
    eval_every: int = _help("score a validation slice every N steps (0 = never)", default=0)
    save_every: int = _help(SAVE_EVERY_HELP, default=25)

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "rl.steps", "must be >= 0")
        _check(self.max_new_tokens >= 1, "rl.max_new_tokens", "must be >= 1")
        _check(self.value_lr > 0, "rl.value_lr", "must be > 0")
        _check(self.batch_size >= 1, "rl.batch_size", "must be >= 1")
        _check(self.samples_per_prompt >= 1, "rl.samples_per_prompt", "must be >= 1")
        _check(
            self.batch_size % self.samples_per_prompt == 0,
            "rl.batch_size",
            f"must be divisible by rl.samples_per_prompt ({self.samples_per_prompt}); "
            f"try {self.batch_size - self.batch_size % self.samples_per_prompt or self.samples_per_prompt}",
        )
        _check(
            self.mini_batch_size >= 1 and self.batch_size % self.mini_batch_size == 0,
            "rl.mini_batch_size",
            f"must divide rl.batch_size ({self.batch_size})",
        )
        if self.algo == "grpo":
            _check(
                self.samples_per_prompt >= 2,
                "rl.samples_per_prompt",
                "GRPO needs at least 2 samples per prompt to form a group baseline",
            )
        _check(self.ppo_epochs >= 1, "rl.ppo_epochs", "must be >= 1")
        _check_loop(
            "rl", self.gradient_accumulation_steps, self.mini_batch_size, self.max_grad_norm, self.save_every
        )
        _check(
            self.mini_batch_size % self.gradient_accumulation_steps == 0,
            "rl.gradient_accumulation_steps",
            f"must divide rl.mini_batch_size ({self.mini_batch_size}) so every micro-batch has the same size",
        )
        _check(self.lr > 0, "rl.lr", "must be > 0")
        _check(self.kl_coef >= 0, "rl.kl_coef", "must be >= 0")
        _check(0 < self.clip_range < 1, "rl.clip_range", "must be in (0, 1)")
        _check(0 <= self.lam <= 1 and 0 <= self.gamma <= 1, "rl.lam", "gamma and lam must be in [0, 1]")
        _check(self.temperature > 0, "rl.temperature", "must be > 0")

    @property
    def prompts_per_batch(self) -> int:
        """Distinct prompts in one rollout batch."""
        return self.batch_size // self.samples_per_prompt


@dataclass(frozen=True)
class EvalConfig:
    """Greedy evaluation on the held-out split."""

    max_new_tokens: int = _help("max tokens per greedy answer", default=128)
    batch_size: int = _help("prompts per generation batch", default=128)
    evaluate_teacher: bool = _help("also score the teacher through its endpoint", default=True)
    models: tuple[str, ...] = _help(
        "workspace checkpoints to score, named by the stage run that wrote them (sft, rl, or a variant's name "
        "such as rl_gold), scored in this order after the teacher",
        default=("sft", "rl"),
    )

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "evaluation.max_new_tokens", "must be >= 1")
        _check(self.batch_size >= 1, "evaluation.batch_size", "must be >= 1")
        _check(len(self.models) <= MAX_EVAL_MODELS, "evaluation.models", f"at most {MAX_EVAL_MODELS} names")
        for i, name in enumerate(self.models):
            _check(
                isinstance(name, str) and RUN_NAME.fullmatch(name) is not None and name != "teacher",
                f"evaluation.models[{i}]",
                f"{name!r} is not a checkpoint name: lower-case letters, digits and _, starting with a letter, "
                "at most 32 characters (the teacher is scored by evaluation.evaluate_teacher)",
            )
        _check(len(set(self.models)) == len(self.models), "evaluation.models", "names a checkpoint twice")
        _check(
            bool(self.models) or self.evaluate_teacher,
            "evaluation.models",
            "is empty and evaluation.evaluate_teacher is false: nothing would be scored",
        )


@dataclass(frozen=True)
class JobSpec:
    """A whole distillation job: data, teacher, student and one config per stage."""

    teacher: TeacherConfig
    student: ModelConfig
    data: DataConfig = _help("questions", default_factory=DataConfig)
    sft: SFTConfig = _help("SFT warm-up", default_factory=SFTConfig)
    labels: LabelConfig = _help("pseudo-labels", default_factory=LabelConfig)
    reward_model: RewardModelConfig = _help("reward model", default_factory=RewardModelConfig)
    rl: RLConfig = _help("RL", default_factory=RLConfig)
    evaluation: EvalConfig = _help("evaluation", default_factory=EvalConfig)
    seed: int = _help("global seed for training", default=0)
    device: Literal["auto", "cpu", "cuda"] = _help("where to train", default="auto")
    threads: int = _help("torch CPU threads (0 = torch default)", default=0)

    def __post_init__(self) -> None:
        if self.rl.reward == "gold":
            _check(
                self.data.gold_available,
                "rl.reward",
                "`gold` reward needs a dataset with answers; use `reward_model` or `pseudo_label`",
            )

    # --- (de)serialisation -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobSpec:
        """Build and validate a spec from plain data (YAML/JSON); unknown fields raise :class:`ConfigError`."""
        return _build(cls, raw, "")

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        """Plain-data form; with ``redact`` the teacher API key is replaced by ``"***"``."""
        out = dataclasses.asdict(self)
        if redact and out["teacher"].get("api_key"):
            out["teacher"]["api_key"] = "***"
        return out


def describe(cls: type) -> dict[str, dict[str, Any]]:
    """Field name -> {type, default, help} for a config class (used by `--help` and the docs)."""
    out: dict[str, dict[str, Any]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING or default is dataclasses.MISSING:
            default = None
        out[f.name] = {"type": str(hints[f.name]), "default": default, "help": f.metadata.get("help", "")}
    return out


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "spec"  # "sft." names the section "sft"
    if not isinstance(raw, dict):
        raise ConfigError(where, f"must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}", f"unknown field; known fields here: {', '.join(sorted(names))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        raise ConfigError(f"{prefix}{missing[0]}" if missing else where, "is required") from exc


def _coerce(tp: Any, value: Any, param: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{param}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, param)
            except ConfigError as exc:
                last = exc
        raise last or ConfigError(param, "invalid value")
    if origin is Literal:
        if value not in args:
            raise ConfigError(param, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(param, f"must be a list, got {type(value).__name__}")
        return tuple(_coerce(args[0], v, f"{param}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(param, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(param, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(param, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(param, f"must be a string, got {value!r}")
        return value
    return value
