# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Reports and benchmarks: the report schemas, Markdown/CSV tables and ``report.html``, provenance, atomic writes,
the training helper and the survey's benchmark grid. Import the submodules (e.g.
``monai_adv.benchmark.html_report``); this package imports nothing itself."""
