"""The one exception type for errors a user can cause (bad path, bad file, bad config)."""


class ErnieError(Exception):
    """A user-facing error: the message names the file and the problem; the CLI exits with status 2."""

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
