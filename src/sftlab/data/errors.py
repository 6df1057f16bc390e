"""User-facing data errors: each names where (file and line or row), which field, what is wrong, and
how to fix it.

Every check has a short, stable ``reason`` code; with ``data.on_error: skip`` records are counted per reason
(``DataReport.skipped``) instead of stopping the run.
"""

from __future__ import annotations

import json

# Reasons a record is removed before tokenisation (validation) ...
INVALID_JSON = "invalid_json"
NOT_UTF8 = "not_utf8"
NOT_AN_OBJECT = "not_an_object"
TOO_DEEP = "too_deep"
DUPLICATE_KEY = "duplicate_key"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_OUTPUT = "empty_output"
EMPTY_CONTENT = "empty_content"
UNKNOWN_ROLE = "unknown_role"
ROLE_ORDER = "role_order"
NO_ASSISTANT_TURN = "no_assistant_turn"
NO_TRAINABLE_TURN = "no_trainable_turn"
LABEL_NOT_IN_MAP = "label_not_in_map"
TEMPLATE_ERROR = "template_error"
# ... and after tokenisation (never errors, always counted).
EMPTY_MASK = "empty_mask"
TOO_LONG = "too_long"


def short_json(value, n: int = 60) -> str:
    """A value as JSON for an error message, cut to ``n`` characters.

    >>> short_json({"a": "xyz" * 30}, 20)
    '{"a": "xyzxyzxyzx...'
    """
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


class DataError(ValueError):
    """A problem with the data (or the template applied to it) that the user can fix.

    >>> str(DataError("the output is empty", reason="empty_output", origin="a.jsonl:3", field="output",
    ...               fix="write the response"))
    "a.jsonl:3: field 'output': the output is empty (fix: write the response)"
    """

    def __init__(
        self, problem: str, *, reason: str = "invalid", origin: str = "", field: str = "", fix: str = ""
    ):
        self.problem, self.reason, self.origin, self.field, self.fix = problem, reason, origin, field, fix
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        what = f"field '{self.field}': " if self.field else ""
        how = f" (fix: {self.fix})" if self.fix else ""
        return f"{where}{what}{self.problem}{how}"

    def at(self, origin: str) -> DataError:
        """The same error located at ``origin`` (kept when it already has one)."""
        return type(self)(
            self.problem, reason=self.reason, origin=self.origin or origin, field=self.field, fix=self.fix
        )

    def with_fix(self, extra: str) -> DataError:
        """The same error with ``extra`` appended to the fix (e.g. the ``on_error: skip`` hint)."""
        fix = f"{self.fix}; {extra}" if self.fix else extra
        return type(self)(self.problem, reason=self.reason, origin=self.origin, field=self.field, fix=fix)

    def __reduce__(self):
        # Keyword-only fields: the default pickling (args only) would lose them when a worker process of
        # datasets.map raises.
        return _rebuild, (type(self), self.problem, self.reason, self.origin, self.field, self.fix)


class TemplateError(DataError):
    """The chat template cannot be found, rendered, or used to derive a loss mask."""


def find_data_error(e: BaseException | None) -> DataError | None:
    """The ``DataError`` behind an exception that ``datasets`` wrapped around it (or None)."""
    while e is not None and not isinstance(e, DataError):
        e = e.__cause__ or e.__context__
    return e


def _rebuild(cls, problem, reason, origin, field, fix):
    return cls(problem, reason=reason, origin=origin, field=field, fix=fix)
