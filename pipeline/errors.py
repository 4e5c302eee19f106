"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class SemsynthError(Exception):
    """Base class: the message must name the file or key at fault and say how to fix it."""


class ConfigError(SemsynthError):
    """A bad params.yaml key, value or override."""


class DatasetError(SemsynthError):
    """A source dataset that cannot be read as asked: layout, files, labels, sizes."""
