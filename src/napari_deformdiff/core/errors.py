"""Errors that carry a message meant for the user (shown as-is in napari and the CLI)."""


class InputError(ValueError):
    """The user's input (file, layer, parameter) cannot be used; the message says why and what to do."""


class OutputExistsError(FileExistsError):
    """A write would replace an existing file and overwriting was not asked for."""
