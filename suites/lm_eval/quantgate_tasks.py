# Functions the task YAMLs here name with `!function quantgate_tasks.<name>` (lm-eval
# resolves that to this file); the code lives in the quantgate package.
from harness.suites.lm_eval_tasks import (  # noqa: F401
    gsm8k_dataset,
    humaneval_dataset,
    humaneval_results,
    json_format_dataset,
    json_format_results,
    mmlu_dataset,
)
