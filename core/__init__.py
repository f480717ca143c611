"""Physics and ML as pure functions on arrays: no I/O, no Ray, Dask or Horovod."""

from jetscan.core.errors import ConfigError, JetscanError, RunnerError, StorageError
from jetscan.core.study import Study

__all__ = ["ConfigError", "JetscanError", "RunnerError", "StorageError", "Study"]
