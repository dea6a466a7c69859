"""Task registry: the BIOMEDICA suite, local fixture tasks and retrieval sets (see :mod:`.registry`)."""
from biomedica_hf.eval.tasks.base import EVALSET_REPO, DataContext, ParquetSource, SuiteSource, Task
from biomedica_hf.eval.tasks.biomedica import MEDMNIST_DOMAINS, MICROBENCH_COARSE, SUITES, discover_suite
from biomedica_hf.eval.tasks.fixtures import FIXTURE_TASKS, FixtureSource
from biomedica_hf.eval.tasks.registry import REGISTRY, get_task, register, resolve_tasks, retrieval_task
from biomedica_hf.eval.tasks.user import (
    TaskFileError,
    UserDataError,
    UserSource,
    load_task_file,
    parse_user_item,
    user_task,
)

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
           "TaskFileError",
           "UserDataError",
           "UserSource",
           "discover_suite",
           "get_task",
           "load_task_file",
           "parse_user_item",
           "register",
           "resolve_tasks",
           "retrieval_task",
           "user_task",
]
