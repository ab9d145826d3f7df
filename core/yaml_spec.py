"""The one reader of users' YAML job specs (the dashboard's spec box, ``twofold run``, ``twofold jobs create
-f``): bounded, and reading numbers as people write them.

PyYAML's safe loader still expands aliases, so a few hundred characters of nested ``*a`` references become
gigabytes (the "billion laughs"). This reader refuses aliases outright (a job spec never needs them), bounds the
text's length and the nesting depth, refuses duplicate keys, and reads ``1e-5`` as a float (YAML 1.1 wants a
dot; YAML 1.2 and every fine-tuning recipe do not). Torch-free: the API imports it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node

#: The longest spec text accepted (characters); a full spec with comments is about 3,000.
MAX_SPEC_CHARS = 200_000
#: The deepest nesting accepted; a spec nests three levels (section, field, list).
MAX_DEPTH = 32

# A float with an exponent and no dot (1e-5, 3E+2, -2e4): a string in YAML 1.1, a float in YAML 1.2.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class SpecSyntaxError(ValueError):
    """A spec text that cannot be read; ``line`` (1-based) is where, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.message = message
        self.line = line


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader without aliases, with a depth bound, duplicate-key errors and YAML 1.2 exponent floats."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        """Compose one node, refusing aliases and nesting past :data:`MAX_DEPTH`."""
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise SpecSyntaxError(
                f"YAML aliases (*{event.anchor}) are not accepted in a job spec; write the value out",
                event.start_mark.line + 1,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SpecSyntaxError(
                    f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark.line + 1
                )
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping whose keys are each given once (YAML would silently keep the last)."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = key_node.value if key_node.tag == "tag:yaml.org,2002:str" else None
            if key is None:
                continue
            if key in seen:
                raise SpecSyntaxError(f"duplicate key {key!r}", key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    """Parse one YAML (or JSON) document with the bounds above.

    Raises:
        SpecSyntaxError: the text is too long, not YAML, uses an alias, nests too deep or repeats a key; its
            ``line`` says where.
    """
    if len(text) > MAX_SPEC_CHARS:
        raise SpecSyntaxError(f"the spec is {len(text):,} characters long; the limit is {MAX_SPEC_CHARS:,}")
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not valid YAML"
        raise SpecSyntaxError(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise SpecSyntaxError(f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def load_spec(text: str) -> dict[str, Any]:
    """A job spec mapping from YAML or JSON text, as plain JSON values (dates become ISO strings).

    Raises:
        SpecSyntaxError: see :func:`load_yaml`; also when the document is not a mapping.
    """
    spec = load_yaml(text)
    if spec is None:
        raise SpecSyntaxError("the spec is empty; give a mapping (teacher:, student:, data:, ...)")
    if not isinstance(spec, dict):
        raise SpecSyntaxError(
            f"the spec must be a mapping (teacher:, student:, data:, ...), not a {type(spec).__name__}"
        )
    plain: dict[str, Any] = json.loads(json.dumps(spec, default=str))
    return plain


def load_spec_file(path: Path) -> dict[str, Any]:
    """:func:`load_spec` on a UTF-8 file, read no further than the length limit allows.

    Raises:
        SpecSyntaxError: as :func:`load_spec`, or when the file is not UTF-8.
        OSError: the file cannot be read.
    """
    most = 4 * MAX_SPEC_CHARS  # UTF-8 takes at most 4 bytes a character
    with path.open("rb") as fh:
        raw = fh.read(most + 1)
    if len(raw) > most:
        raise SpecSyntaxError(
            f"the file is over {most:,} bytes; a spec is at most {MAX_SPEC_CHARS:,} characters"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecSyntaxError(f"not UTF-8 text (byte {exc.start})") from None
    return load_spec(text)
