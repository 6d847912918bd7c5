"""The one error type the pack raises for bad user input."""


class MagCacheInputError(ValueError):
    """A user-supplied value is wrong. The message names the input and what would be right."""

    def __init__(self, input_name: str, problem: str):
        self.input_name = input_name
        super().__init__(f"{input_name}: {problem}")
