# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""ignite handlers that add attacks and adversarial training to existing MONAI trainers and evaluators."""

from monai_adv.handlers.adversarial_batch import AdversarialBatchHandler

__all__ = ["AdversarialBatchHandler"]
