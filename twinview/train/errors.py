"""Errors the training engine raises for conditions a user can act on."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and the last good checkpoint is kept."""
