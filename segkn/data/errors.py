"""The one exception a user's data problem raises."""


class DatasetError(ValueError):
    """A dataset on disk (or its configuration) is missing, malformed or inconsistent."""
