# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The tutorials run (in their quick mode)."""


def test_add_an_attack_to_your_pipeline_runs():
    from tutorials.add_an_attack_to_your_pipeline import main

    result = main(["--tiny"])
    assert 0.0 <= result["robust_accuracy"] <= 1.0 and 0.0 <= result["clean_accuracy"] <= 1.0
