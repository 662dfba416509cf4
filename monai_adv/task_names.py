# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The task names, in one place (torch-free, so the command line can offer them before importing torch)."""

__all__ = ["TASKS", "TASK_CHOICES"]

#: the tasks an attack, a defense or an evaluation runs as
TASKS = ("classification", "multilabel", "segmentation")
#: what a ``task=`` argument accepts: a task, or "auto" (read from the shapes of logits and labels)
TASK_CHOICES = ("auto",) + TASKS
