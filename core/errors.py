"""One exception type for every problem a user can fix.

The CLI and the studio print `problem` and `fix` and nothing else: no traceback for bad input.
"""


class UnlearnError(Exception):
    """A problem with the user's input or environment, with the fix spelled out."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")

    def __str__(self) -> str:  # the same text everywhere: CLI, studio, logs
        return self.args[0]


def require(condition: bool, problem: str, fix: str = "") -> None:
    """Raise UnlearnError unless `condition` holds (unlike assert, survives `python -O`)."""
    if not condition:
        raise UnlearnError(problem, fix)
