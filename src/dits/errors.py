"""User-facing errors: the CLI prints their message in one line, without a traceback."""


class DitsError(Exception):
    """A mistake the user can fix (bad config key, unknown name, missing file, malformed data).

    The message must name the offending key, file or instance and say what to do.
    """
