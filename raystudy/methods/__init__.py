"""Training methods. A method only supplies the loss of a batch (and may react to
epoch / learning-rate-milestone events); `raystudy.train` owns the loop.

Importing this package registers every method.
"""

from .base import Method, TrainState  # noqa: F401
from . import adversarial, cusp, natural, regularizers, trades  # noqa: F401
