"""Task registry: the BIOMEDICA suite, local fixture tasks and retrieval sets (see :mod:`.registry`)."""
from .base import EVALSET_REPO, DataContext, ParquetSource, SuiteSource, Task
from .biomedica import MEDMNIST_DOMAINS, MICROBENCH_COARSE, SUITES, discover_suite
from .fixtures import FIXTURE_TASKS, FixtureSource
from .registry import REGISTRY, get_task, register, resolve_tasks, retrieval_task

__all__ = [
           "EVALSET_REPO",
           "FIXTURE_TASKS",
           "MEDMNIST_DOMAINS",
           "MICROBENCH_COARSE",
           "REGISTRY",
           "SUITES",
           "DataContext",
           "FixtureSource",
           "ParquetSource",
           "SuiteSource",
           "Task",
           "discover_suite",
           "get_task",
           "register",
           "resolve_tasks",
           "retrieval_task",
]
