"""Why a call failed, and whether trying again could help."""


class Retryable(Exception):
    """A failure worth another attempt, e.g. a dependency that was briefly
    unavailable. The host retries with backoff until the attempts run out."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = str(message)


class Permanent(Exception):
    """A failure retrying cannot fix, e.g. a request that makes no sense.
    The message goes to the dead letters at once."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = str(message)


class Rejected(Exception):
    """Raised by a mapper: the message is poison and is dead-lettered at
    once with this reason, never retried. (Any other exception in a mapper
    is a rejection too, with the exception as the reason.)"""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = str(reason)
